"""From a search's outcome to a retrained model compared with the baselines (`finalize`)."""

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.search.finalize import (
    FinalConfig,
    comparison_lines,
    finalist_archs,
    finalize,
    recipe_config,
    recipe_differences,
    retrain,
    summary,
)
from rankitect.search.outcome import SearchOutcome
from rankitect.space import load_space
from rankitect.space.spaces import conf_dir

TINY = [
    "data.source.n_train=3000",
    "data.source.n_val=600",
    "data.source.n_test=600",
    "data.batch_size=250",
    "search_space=generic",
    "logger=none",
]


def compose_search(*overrides):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("search", overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def setup():
    cfg = compose_search()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    space = load_space(OmegaConf.to_container(cfg.search_space), dm.feature_spec)
    return cfg, dm, space


def test_finalists_are_distinct_within_the_target_and_start_at_the_mode(setup):
    _, _, space = setup
    probs = space.priors()
    mode = space.sample(torch.Generator().manual_seed(0))
    outcome = SearchOutcome(arch=mode, probs=probs)
    target = space.flops(mode) * 1.5
    archs = finalist_archs(space, outcome, 5, target, draws=256)
    assert archs[0] == mode and len(archs) == 5
    assert len({a.to_json() for a in archs}) == 5
    assert all(space.flops(a) <= target for a in archs)
    # a method's own ranking is kept, and candidates above the target are dropped
    big = max(archs, key=space.flops)
    ranked = SearchOutcome(arch=big, probs=probs, candidates=[big, *archs])
    kept = finalist_archs(space, ranked, 3, space.flops(big) - 1, near_target=0.0)
    assert big not in kept and kept == [a for a in archs if a != big][:3]


def test_a_finalist_near_the_target_is_always_in_the_race(setup):
    _, _, space = setup
    gen = torch.Generator().manual_seed(3)
    distinct = sorted({space.sample(gen).to_json() for _ in range(40)})
    archs = sorted((space.arch_from_json(a) for a in distinct), key=space.flops)
    small, large = archs[:3], archs[-1]
    target = space.flops(large)
    assert all(space.flops(a) < 0.9 * target for a in small)
    outcome = SearchOutcome(arch=small[0], probs=space.priors(), candidates=[*small, large])
    kept = finalist_archs(space, outcome, 3, target)
    assert kept == [small[0], small[1], large]
    assert finalist_archs(space, outcome, 3, target, near_target=0.0) == small


def _finished(cfg, final, run_dir, arch_file, val_ne, space_cfg):
    """A finished retrain of ``arch_file`` with validation NE ``val_ne``, as `retrain` reads
    it back (the same recipe, so it is reused and not rerun)."""
    from rankitect.search.finalize import arch_model

    run_cfg = recipe_config(cfg, final, arch_model(space_cfg, arch_file), 0, final.max_epochs)
    metrics = {"auc": 0.5, "logloss": 0.5, "ne": val_ne}
    done = {
        "config": OmegaConf.to_container(run_cfg, resolve=True),
        "flops": 1,
        "params": 1,
        "seed": 0,
        "val": metrics,
        "test": metrics,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(done))


@pytest.mark.parametrize("seed_ne", [0.01, 10.0])
def test_the_halvings_winner_replaces_the_seed_only_when_it_beats_it(setup, tmp_path, seed_ne):
    _, dm, _ = setup
    cfg = compose_search(
        "search_space=rankitect",
        "final.finalists=1",
        "final.max_epochs=1",
        "final.baselines=[]",
        "final.export=false",
    )
    space = load_space(OmegaConf.to_container(cfg.search_space), dm.feature_spec)
    seed = space.seed_arch()
    gen = torch.Generator().manual_seed(0)
    found = next(a for a in (space.sample(gen) for _ in range(200)) if a != seed)
    outcome = SearchOutcome(arch=found, probs=space.priors())
    final_cfg = FinalConfig.from_config(cfg.final)
    seed_file = tmp_path / "final" / "finalists" / "seed.json"
    seed_file.parent.mkdir(parents=True)
    seed_file.write_text(seed.to_json() + "\n")
    space_cfg = OmegaConf.to_container(cfg.search_space, resolve=True)
    _finished(cfg, final_cfg, tmp_path / "final" / "seed_s0", seed_file, seed_ne, space_cfg)
    out = finalize(cfg, space, outcome, dm, tmp_path, None)["final"]
    race = out["seed_race"]
    assert race["seed_val_ne"] == seed_ne and 0.1 < race["searched_val_ne"] < 2.0
    seed_won = seed_ne < race["searched_val_ne"]
    assert race["winner"] == ("seed" if seed_won else "searched")
    assert out["is_seed"] is seed_won
    assert space.arch_from_json(json.dumps(out["arch"])) == (seed if seed_won else found)
    lines = comparison_lines(out, {})
    assert ("the found model is the space's seed" in lines[1]) is seed_won
    # no race when the seed is off, or is the halving's winner itself
    off = compose_search(
        "search_space=rankitect",
        "final.finalists=1",
        "final.max_epochs=1",
        "final.baselines=[]",
        "final.export=false",
        "final.include_seed=false",
    )
    assert finalize(off, space, outcome, dm, tmp_path, None)["final"]["seed_race"] is None


def test_no_candidate_within_the_target_is_a_clear_error(setup):
    _, _, space = setup
    arch = space.sample(torch.Generator().manual_seed(1))
    outcome = SearchOutcome(arch=arch, probs=space.one_hot(space.values(arch)))
    with pytest.raises(ValueError, match="no candidate architecture has FLOPs <= the target"):
        finalist_archs(space, outcome, 3, 1.0, draws=8)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"finalists": 0}, "final.finalists"),
        ({"halving_epochs": [2, 1]}, "final.halving_epochs"),
        ({"seeds": []}, "final.seeds"),
        ({"eta": 1}, "final.eta"),
        ({"bogus": 1}, "unknown key"),
    ],
)
def test_bad_final_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        FinalConfig.from_config(override)


def test_summary_over_seeds_gives_means_spreads_and_each_seed():
    runs = [
        {
            "flops": 10,
            "params": 3,
            "seed": s,
            "val": {"auc": a, "logloss": 0.2, "ne": 0.5},
            "test": {"auc": a, "logloss": 0.3, "ne": 0.6},
        }
        for s, a in ((0, 0.7), (1, 0.9))
    ]
    out = summary(runs)
    assert out["test"]["auc"] == pytest.approx(0.8) and out["test_sd"]["auc"] > 0.1
    assert [s["seed"] for s in out["seeds"]] == [0, 1] and out["flops"] == 10


def test_a_baseline_under_another_recipe_is_flagged_in_the_comparison():
    ours = {"data": {"batch_size": 4096, "source": {"root": "a"}}, "module": {"lr": 1e-3}}
    theirs = {"data": {"batch_size": 1024, "source": {"root": "a"}}, "module": {"lr": 1e-3}}
    diffs = recipe_differences(ours, theirs)
    assert diffs == {"data.batch_size": {"final": 4096, "baseline": 1024}}
    metrics = {"auc": 0.8, "logloss": 0.4, "ne": 0.9}
    found = {"test": metrics, "flops": 10}
    (line,) = comparison_lines(found, {"dnn": {"test": metrics, "flops": 10}})[1:]
    assert "NOT the same recipe" not in line
    (line,) = comparison_lines(
        found, {"dnn": {"test": metrics, "flops": 10, "recipe_differs": diffs}}
    )[1:]
    assert "NOT the same recipe: data.batch_size 4096 vs 1024" in line


def test_a_finished_retrain_under_other_settings_is_not_reused(setup, tmp_path):
    cfg, _, _ = setup
    final = FinalConfig.from_config(cfg.final)
    model = {"_target_": "rankitect.models.LR", "_partial_": True}
    run_cfg = recipe_config(cfg, final, model, 0, 1)
    done = {"val": {}, "config": OmegaConf.to_container(run_cfg, resolve=True)}
    (tmp_path / "results.json").write_text(json.dumps(done))
    assert retrain(tmp_path, run_cfg) == done
    run_cfg.data.batch_size = 7
    with pytest.raises(ValueError, match=r"results.json: a finished retrain .*data.batch_size 7"):
        retrain(tmp_path, run_cfg)


@pytest.mark.slow
def test_finalize_retrains_compares_and_exports(setup, tmp_path):
    cfg, dm, space = setup
    cfg = compose_search(
        "final.finalists=2",
        "final.halving_epochs=[1]",
        "final.max_epochs=1",
        "final.baselines=[lr]",
    )
    gen = torch.Generator().manual_seed(2)
    mode = space.sample(gen)
    outcome = SearchOutcome(arch=mode, probs=space.priors())
    target = float(space.flops(mode)) * 2
    out = finalize(cfg, space, outcome, dm, tmp_path, target)
    final = out["final"]
    assert final["flops"] <= target and final["flops"] == space.flops(
        space.validate(type(mode).from_dict(final["arch"]))
    )
    for split in ("val", "test"):
        assert set(final[split]) == {"auc", "logloss", "ne"}
    assert set(out["baselines"]) == {"lr"} and out["baselines"]["lr"]["flops"] > 0
    rungs = out["final_halving"]
    assert [r["epochs"] for r in rungs] == [1] and len(rungs[0]["finalists"]) == 2
    assert len({json.dumps(f["arch"]) for f in out["final_candidates"]}) == 2
    assert final["arch"] == out["final_candidates"][rungs[0]["finalists"][0]]["arch"]
    # finished retrains are read back, not rerun
    mtime = (tmp_path / "final" / "winner_s0" / "results.json").stat().st_mtime
    again = finalize(cfg, space, outcome, dm, tmp_path, target)
    assert again["final"]["test"] == final["test"]
    assert (tmp_path / "final" / "winner_s0" / "results.json").stat().st_mtime == mtime
    # a baseline read by path from a run under the same recipe compares like for like
    earlier = tmp_path / "final" / "baselines" / "lr_s0" / "results.json"
    by_path = compose_search(
        "final.finalists=2",
        "final.halving_epochs=[1]",
        "final.max_epochs=1",
        f"final.baselines=[{earlier}]",
    )
    again = finalize(by_path, space, outcome, dm, tmp_path, target)
    assert "recipe_differs" not in again["baselines"]["lr_s0"]
    # the exported program runs in a fresh process with torch alone, giving the same logits
    export = final["export"]
    dense, sparse, _ = next(iter(dm.test_dataloader()))
    torch.save({"dense": dense[:16], "sparse": sparse[:16]}, tmp_path / "batch.pt")
    code = (
        "import sys, torch\n"
        "b = torch.load(sys.argv[2])\n"
        f"kind = {export['format']!r}\n"
        "m = torch.export.load(sys.argv[1]).module() if kind == 'torch.export' "
        "else torch.jit.load(sys.argv[1])\n"
        "torch.save(m(b['dense'], b['sparse']), sys.argv[3])\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            code,
            export["path"],
            str(tmp_path / "batch.pt"),
            str(tmp_path / "logits.pt"),
        ],
        check=True,
        cwd=tmp_path,
    )
    from rankitect.search.finalize import load_trained

    model = load_trained(
        space, space.validate(type(mode).from_dict(final["arch"])), export["checkpoint"]
    ).eval()
    with torch.no_grad():
        want = model(dense[:16], sparse[:16])
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), want, atol=1e-5, rtol=1e-5)
