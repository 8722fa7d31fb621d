"""`rankitect-arch merge|scale`: files in, files out, costs printed, trainable results."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rankitect.cli.arch import main
from rankitect.cli.config import conf_dir
from rankitect.data import FeatureSpec
from rankitect.space import load_space, merge_archs, scale_arch
from rankitect.space.transform import space_config
from rankitect.train import train

# conf/data/synthetic.yaml's features
CARDS = (20, 30, 50, 40, 100, 60, 200, 300)
SPEC = FeatureSpec(n_dense=4, sparse_cardinalities=CARDS)
TINY_DATA = ["data.source.n_train=2000", "data.source.n_val=500", "data.source.n_test=500"]


@pytest.fixture(scope="module")
def space():
    return load_space("rankitect", SPEC)


@pytest.fixture
def files(tmp_path, space):
    (tmp_path / "spec.json").write_text(
        json.dumps({"n_dense": 4, "sparse_cardinalities": list(CARDS)})
    )
    g = torch.Generator().manual_seed(5)
    a, b = space.sample(g), space.sample(g)
    (tmp_path / "a.json").write_text(a.to_json())
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_arch.json").write_text(b.to_json())
    (run / "results.json").write_text(json.dumps({"kind": "search", "arch": b.to_dict()}))
    return tmp_path, a, b


def test_merge_writes_the_merged_arch_and_prints_costs(files, space, capsys):
    tmp, a, b = files
    out = tmp / "merged.json"
    argv = ["merge", "--spec", str(tmp / "spec.json"), str(tmp / "a.json"), str(tmp / "run")]
    assert main([*argv, "-o", str(out)]) == 0
    merged = space.arch_from_json(out.read_text())
    assert merged == merge_archs(space, [a, b])
    printed = capsys.readouterr().out
    for arch in (a, b, merged):
        assert f"{space.flops(arch):,}" in printed and f"{space.params(arch):,}" in printed
    # an existing output is kept unless --force; a results.json reads as its arch
    out.write_text("keep")
    assert main([*argv[:-1], str(tmp / "run" / "results.json"), "-o", str(out)]) == 2
    assert "merged.json: already exists" in capsys.readouterr().err
    assert out.read_text() == "keep"
    assert main([*argv[:-1], str(tmp / "run" / "results.json"), "-o", str(out), "--force"]) == 0
    assert space.arch_from_json(out.read_text()) == merged


def test_errors_name_the_file_and_field(files, space, capsys):
    tmp, a, _ = files
    x = str(tmp / "x.json")
    spec = ["--spec", str(tmp / "spec.json")]
    assert main(["merge", *spec, str(tmp / "a.json"), str(tmp / "nope.json"), "-o", x]) == 2
    assert "nope.json: cannot be read" in capsys.readouterr().err
    doc = space.seed_arch().to_dict()  # choice 0: linear 128 of options 64..160
    doc["choices"][0]["dim"] = 17
    (tmp / "bad.json").write_text(json.dumps(doc))
    assert main(["scale", *spec, "--factor", "2", str(tmp / "bad.json"), "-o", x]) == 2
    err = capsys.readouterr().err
    assert "bad.json: not an architecture of space 'rankitect'" in err
    assert "choice 0, field 'dim': 17" in err
    (tmp / "spec2.json").write_text('{"n_dense": 4}')
    argv = ["scale", "--spec", str(tmp / "spec2.json"), "--factor", "2", str(tmp / "a.json")]
    assert main([*argv, "-o", x]) == 2
    assert "spec2.json: field 'sparse_cardinalities' is missing" in capsys.readouterr().err
    argv = ["scale", *spec, "--factor", "2", "--bottleneck-factor", "2", str(tmp / "a.json")]
    assert main([*argv, "-o", x]) == 2
    assert "needs widen=True" in capsys.readouterr().err
    assert not (tmp / "x.json").exists()


def compose_train(*overrides: str):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *TINY_DATA,
                "data.batch_size=500",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "logger=none",
                *overrides,
            ],
        )


def test_widened_scale_from_the_data_config_trains(files, space, capsys):
    tmp, a, _ = files
    out = tmp / "scaled.json"
    argv = ["scale", "--data", "synthetic", *[f"--override={o}" for o in TINY_DATA]]
    argv += ["--factor", "1.5", "--widen", "--bottleneck-factor", "2", str(tmp / "a.json")]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    space_file = tmp / "scaled.space.yaml"
    assert f"model.space={space_file}" in printed
    expected = scale_arch(space, a, 1.5, widen=True, bottleneck_factor=2)
    wide = load_space(str(space_file), SPEC)
    assert wide.choices == expected.space.choices and wide.bottleneck == 2 * space.bottleneck
    scaled = wide.arch_from_json(out.read_text())
    assert scaled == expected.arch
    assert f"{wide.flops(scaled):,}" in printed
    # ~100 steps: after the 4 of 2,000 rows in batches of 500, BatchNorm's running statistics
    # still lag the batch statistics and the eval-mode val NE is 1.2 (1.0 in train mode)
    cfg = compose_train(
        "model=arch",
        f"model.arch_file={out}",
        f"model.space={space_file}",
        "data.source.n_train=10000",
        "data.batch_size=100",
    )
    results = train(cfg, tmp / "train")
    assert results["flops"] == wide.flops(scaled)
    assert results["val"]["ne"] < 1.1


def test_merged_arch_from_a_run_dir_trains(files, space):
    tmp, a, b = files
    run = tmp / "run"
    # what a rankitect-search run keeps: its composed config, data and search space included
    run_cfg = {"data": compose_train().data, "search_space": space_config("rankitect")}
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(run_cfg), run / ".hydra" / "config.yaml")
    out = tmp / "merged.json"
    argv = ["merge", "--run-dir", str(run), str(tmp / "a.json"), str(run), "-o", str(out)]
    assert main(argv) == 0
    merged = space.arch_from_json(out.read_text())
    assert merged == merge_archs(space, [a, b])
    results = train(compose_train("model=arch", f"model.arch_file={out}"), tmp / "train")
    assert results["flops"] == space.flops(merged)
    assert results["model"] == "arch:merged"
