"""The Figure-3 statistics command."""

import numpy as np

from rankitect.data import FeatureSpec
from rankitect.space import load_space
from rankitect.space.stats import arch_stats, main, sample_stats


def test_stats_command_writes_the_figure(tmp_path, capsys):
    main(["--space", "rankitect", "--n", "200", "--out", str(tmp_path), "--n-sparse", "5"])
    png = tmp_path / "rankitect_stats.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "size 10^" in out and "seed" in out


def test_stats_of_the_seed_model():
    space = load_space("rankitect", FeatureSpec(13, (10,) * 10))
    seed = space.seed_arch()
    stats = arch_stats(space, seed)
    used = seed.reachable()
    assert stats["choices_used"] == len(used) == space.num_choices - 1  # the copy is unused
    assert stats["connections"] == sum(len(seed.choices[c].inputs) for c in used)
    assert stats["flops"] == space.flops(seed) and stats["dense_params"] == space.params(seed)


def test_sampled_stats_are_seeded():
    space = load_space("generic", FeatureSpec(3, (4, 4)))
    a, b = sample_stats(space, 50, seed=1), sample_stats(space, 50, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (a["choices_used"] >= 1).all() and (a["choices_used"] <= space.num_choices).all()
