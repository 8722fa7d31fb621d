"""`rankitect-report`: run classification, the Pareto front, NE gain, outputs and errors.

The runs are hand-written results.json files; the expected fronts and gains are worked out by
hand in the comments.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from rankitect.cli.config import conf_dir
from rankitect.cli.report import main
from rankitect.report import ReportError, build_report, pareto_mask
from rankitect.train import train

SYNTHETIC = {"source": {"_target_": "rankitect.data.SyntheticCTR", "n_train": 100}}


def write(path: Path, data: dict | str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (path / "results.json").write_text(text)
    return path


def train_run(path, model, flops, ne, auc=0.7, seed=0, arch_file=None, **extra):
    model_cfg = {"_target_": "rankitect.models.DNN"}
    if arch_file is not None:
        model_cfg = {"_target_": "rankitect.space.build_arch_model", "space": "rankitect",
                     "arch_file": str(arch_file)}  # fmt: skip
    return write(path, {
        "model": model, "flops": flops, "params": 10 * flops,
        "val": {"ne": ne + 0.01, "logloss": ne / 2 + 0.01, "auc": auc - 0.01},
        "test": {"ne": ne, "logloss": ne / 2, "auc": auc},
        "fit_seconds": 1.5, "seed": seed,
        "config": {"data": SYNTHETIC, "model": model_cfg, "seed": seed}, **extra,
    })  # fmt: skip


def search_run(path, method, flops, target, params=123, seconds=12.0, space="rankitect"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "best_arch.json").write_text('{"choices": []}\n')
    return write(path, {
        "kind": "search", "method": method, "space": space, "model": f"{method}:{space}",
        "flops": flops, "params": params, "target_flops": target, "search_seconds": seconds,
        "supernet_val": {"ne": 0.9}, "seed": 0, "config": {"data": SYNTHETIC},
    })  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    """Eight training runs and a search, (FLOPs, test NE, test AUC):

    lr (100, .90, .70), arch E (500, .80, .78) and F (500, .80, .78) with seeds 0 and 1,
    H (800, .85, .80), dnn (1000, .70, .79), deepfm (1000, .75, .81), dcnv2 (2000, .70, .82),
    G (3000, .60, .80), retrained from the search at 400 FLOPs (target 400).

    NE front: lr; E and F (a tie: neither dominates); dnn; G. deepfm loses to dnn at equal
    FLOPs, dcnv2 to dnn at equal NE, H to E.
    AUC front: lr; E, F; H; deepfm; dcnv2. dnn loses to H, G to dcnv2.
    """
    root = tmp_path / "runs"
    search = search_run(root / "search" / "0", "oneshot_rl", 400, 40000.0)
    train_run(root / "base" / "lr", "lr", 100, 0.90, auc=0.70)
    train_run(root / "base" / "dnn", "dnn", 1000, 0.70, auc=0.79)
    train_run(root / "base" / "deepfm", "deepfm", 1000, 0.75, auc=0.81)
    train_run(root / "base" / "dcnv2", "dcnv2", 2000, 0.70, auc=0.82)
    for name, model, flops, ne, auc, seed in [("E", "arch:tie", 500, 0.80, 0.78, 0),
                                              ("F", "arch:tie", 500, 0.80, 0.78, 1),
                                              ("H", "arch:h", 800, 0.85, 0.80, 0)]:  # fmt: skip
        train_run(root / "arch" / name, model, flops, ne, auc=auc, seed=seed,
                  arch_file=root / "archs" / f"{name}.json")  # fmt: skip
    train_run(root / "arch" / "G", "arch:best_arch", 3000, 0.60, auc=0.80,
              arch_file=search / "best_arch.json")  # fmt: skip
    return root


def by_label(report):
    return report.table.set_index("label")


def test_front_over_ne_with_ties_and_dominated_points(runs):
    report = build_report([runs])
    t = by_label(report)
    assert len(t) == 9
    assert set(t.index[t["on_front"]]) == {
        "lr", "arch:tie (seed 0)", "arch:tie (seed 1)", "dnn", "oneshot_rl@40k",
    }  # fmt: skip
    # The search run has no test NE: kept in the table, never on the front.
    assert t.loc["oneshot_rl@40k (search)", "kind"] == "search"
    assert np.isnan(t.loc["oneshot_rl@40k (search)", "test_ne"])
    assert not t.loc["oneshot_rl@40k (search)", "on_front"]


def test_front_over_auc_is_higher_is_better(runs):
    t = by_label(build_report([runs], metric="test_auc"))
    assert set(t.index[t["on_front"]]) == {
        "lr", "arch:tie (seed 0)", "arch:tie (seed 1)", "arch:h", "deepfm", "dcnv2",
    }  # fmt: skip


def test_pareto_mask_by_hand():
    # (cost, value): (1, 5) front; (1, 5) tie: front; (2, 5) dominated; (2, 3) front;
    # (3, 4) dominated by (2, 3); (4, 1) front.
    cost, value = [1, 1, 2, 2, 3, 4], [5, 5, 5, 3, 4, 1]
    assert pareto_mask(cost, value, False).tolist() == [1, 1, 0, 1, 0, 1]
    # Higher is better: (1, 5) and its tie lead; nothing else beats 5.
    assert pareto_mask(cost, value, True).tolist() == [1, 1, 0, 0, 0, 0]


def test_labels_kinds_and_fields(runs):
    t = by_label(build_report([runs]))
    assert t.loc["dnn", "kind"] == "baseline" and t.loc["dnn", "method"] == "dnn"
    # G's arch file is the search run's best_arch.json: labelled by its method and target.
    g = t.loc["oneshot_rl@40k"]
    assert (g["kind"], g["method"], g["target_flops"], g["space"]) == (
        "arch", "oneshot_rl", 40000, "rankitect",
    )  # fmt: skip
    assert g["search_seconds"] == 12.0 and g["arch_file"].endswith("search/0/best_arch.json")
    # Without its own dense_params the retrained row takes the search's (dense) count.
    assert g["dense_params"] == 123
    s = t.loc["oneshot_rl@40k (search)"]
    assert (s["flops"], s["dense_params"], s["proxy_ne"]) == (400, 123, 0.9)
    assert s["arch_file"].endswith("best_arch.json")
    # An arch from a file that is no search run keeps its model name; repeats get the seed.
    assert t.loc["arch:tie (seed 1)", "kind"] == "arch"
    assert t.loc["dnn", "data"] == "SyntheticCTR"


def test_same_method_and_target_in_two_spaces_are_labelled_by_space(tmp_path):
    for space, flops in (("rankitect", 400), ("dhen2", 500)):
        search_run(tmp_path / space, "oneshot_rl", flops, 40000, space=space)
    train_run(tmp_path / "dnn", "dnn", 700, 0.5)
    labels = set(build_report([tmp_path]).table["label"])
    assert labels == {
        "dnn", "oneshot_rl@40k (search) (rankitect)", "oneshot_rl@40k (search) (dhen2)",
    }  # fmt: skip


def test_a_search_with_a_final_block_is_one_retrained_point(tmp_path):
    """A search that retrained its finalists (conf/final) shows as its final model (the mean
    over the winner's seeds), beside the baselines it trained; the finalists' and winner's
    own runs under final/ are not rows of their own."""
    run = search_run(tmp_path / "s", "dnas", 900, 1000.0)
    res = json.loads((run / "results.json").read_text())
    res["final"] = {
        "flops": 950, "params": 40, "arch_file": str(run / "final" / "finalists" / "arch1.json"),
        "val": {"ne": 0.61, "logloss": 0.3, "auc": 0.81},
        "test": {"ne": 0.6, "logloss": 0.3, "auc": 0.8},
    }  # fmt: skip
    write(run, res)
    train_run(run / "final" / "rung0" / "arch0", "arch:arch0", 800, 0.9)
    train_run(run / "final" / "winner_s0", "arch:arch1", 950, 0.6)
    train_run(run / "final" / "baselines" / "dnn_s0", "dnn", 1000, 0.7)
    t = by_label(build_report([tmp_path], baseline="dnn"))
    assert set(t.index) == {"dnas@1k (search)", "dnas@1k", "dnn"}
    f = t.loc["dnas@1k"]
    assert (f["kind"], f["method"], f["flops"], f["test_ne"]) == ("arch", "dnas", 950, 0.6)
    assert f["ne_gain_pct"] == pytest.approx(100 * 0.1 / 0.7) and f["on_front"]


def test_ne_gain_over_a_baseline(runs):
    t = by_label(build_report([runs], baseline="dnn"))
    # gain = (0.70 - NE) / 0.70 * 100
    assert t.loc["oneshot_rl@40k", "ne_gain_pct"] == pytest.approx(100 * 0.10 / 0.70)
    assert t.loc["lr", "ne_gain_pct"] == pytest.approx(-100 * 0.20 / 0.70)
    assert t.loc["dnn", "ne_gain_pct"] == pytest.approx(0.0)
    # On a val metric the gain uses val NE: dnn 0.71, G 0.61.
    t = by_label(build_report([runs], metric="val_auc", baseline="dnn"))
    assert t.loc["oneshot_rl@40k", "ne_gain_pct"] == pytest.approx(100 * 0.10 / 0.71)


def test_baseline_with_several_runs_uses_their_mean_ne(runs):
    train_run(runs / "base" / "dnn_seed1", "dnn", 1000, 0.80, seed=1)
    report = build_report([runs], baseline="dnn")
    assert report.baseline_ne == {"SyntheticCTR": pytest.approx(0.75)}
    assert by_label(report).loc["oneshot_rl@40k", "ne_gain_pct"] == pytest.approx(20.0)
    with pytest.raises(ReportError, match=r"'wide_dnn'.*dcnv2, deepfm, dnn, lr"):
        build_report([runs], baseline="wide_dnn")


def test_runs_on_different_data_get_one_front_each(runs, tmp_path, capsys):
    frappe = {"source": {"_target_": "rankitect.data.CategoricalCSVReader", "root": "/d/frappe_x1"}}
    # dominated by lr (100 FLOPs, NE 0.90) if it were on the same data
    write(tmp_path / "frappe" / "dnn", {
        "model": "dnn", "flops": 1000, "test": {"ne": 0.95}, "config": {"data": frappe},
    })  # fmt: skip
    write(tmp_path / "frappe" / "big", {
        "model": "dcnv2", "flops": 5000, "test": {"ne": 0.97}, "config": {"data": frappe},
    })  # fmt: skip
    report = build_report([runs, tmp_path / "frappe"], baseline="dnn")
    assert report.datasets == ["CategoricalCSVReader:frappe_x1", "SyntheticCTR"]
    t = report.table.set_index(["data", "label"])
    # the same model on two data sets is labelled by its data
    assert t.loc[("CategoricalCSVReader:frappe_x1", "dnn (frappe_x1)"), "on_front"]
    assert t.loc[("SyntheticCTR", "dnn (SyntheticCTR)"), "on_front"]
    assert not t.loc[("CategoricalCSVReader:frappe_x1", "dcnv2 (frappe_x1)"), "on_front"]
    assert t.loc[("SyntheticCTR", "lr"), "on_front"]  # the synthetic front is unchanged
    # each run's NE gain is over the baseline on its own data
    assert report.baseline_ne == {"SyntheticCTR": 0.70, "CategoricalCSVReader:frappe_x1": 0.95}
    gain = t.loc[("CategoricalCSVReader:frappe_x1", "dcnv2 (frappe_x1)"), "ne_gain_pct"]
    assert gain == pytest.approx(-100 * 0.02 / 0.95)
    main([str(runs), str(tmp_path / "frappe"), "-o", str(tmp_path / "out"), "--baseline", "dnn"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "One Pareto front per data set (2)" in md and "| front | data | run |" in md
    single = matplotlib.image.imread(_png(build_report([runs]), tmp_path / "one"))
    double = matplotlib.image.imread(tmp_path / "out" / "pareto.png")
    assert double.shape[0] > 1.8 * single.shape[0]  # a panel per data set


def _png(report, out: Path) -> Path:
    from rankitect.report import write_report

    return write_report(report, out)["png"]


def test_writes_csv_markdown_and_png(runs, tmp_path, capsys):
    out = tmp_path / "out"
    main([str(runs), "-o", str(out), "--baseline", "dnn", "--title", "Hand-made runs"])
    printed = capsys.readouterr().out
    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 9
    assert set(csv.loc[csv["on_front"], "label"]) == {
        "lr", "arch:tie (seed 0)", "arch:tie (seed 1)", "dnn", "oneshot_rl@40k",
    }  # fmt: skip
    assert csv.loc[csv["label"] == "lr", "ne_gain_pct"].item() == pytest.approx(-200 / 7)
    md = (out / "report.md").read_text()
    assert md.startswith("# Hand-made runs\n")
    front_rows = [line for line in md.splitlines() if line.startswith("| yes |")]
    assert len(front_rows) == 5 and "| **dnn** |" in md and "| deepfm |" in md
    assert printed.startswith(md.rstrip("\n")) or md.rstrip("\n") in printed
    assert f"wrote png: {out / 'pareto.png'}" in printed
    image = matplotlib.image.imread(out / "pareto.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    # No temporary files are left beside the outputs.
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.csv", "report.md"]


def test_duplicates(runs, tmp_path, caplog):
    # Overlapping directories: each results.json once.
    assert len(build_report([runs, runs / "base", runs / "base" / "dnn"]).table) == 9
    assert len(build_report([runs / "base" / "dnn" / "results.json", runs]).table) == 9
    # A copied run directory is the same run: shown once, the copy reported as skipped.
    shutil.copytree(runs / "base" / "dnn", tmp_path / "copy" / "dnn")
    with caplog.at_level(logging.WARNING, logger="rankitect.report"):
        report = build_report([runs, tmp_path / "copy"])
    assert len(report.table) == 9
    assert report.skipped == [
        (
            tmp_path / "copy" / "dnn" / "results.json",
            f"the same results as {runs / 'base' / 'dnn' / 'results.json'}",
        )
    ]
    assert "copy/dnn/results.json" in caplog.text
    # Two different runs with one label and no seeds to tell them apart get run numbers.
    other = tmp_path / "other"
    for i, ne in enumerate([0.5, 0.6]):
        write(other / str(i), {"model": "dnn", "flops": 10, "test": {"ne": ne}})
    assert sorted(build_report([other]).table["label"]) == ["dnn #1", "dnn #2"]


def test_empty_and_missing_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=f"no results.json under {tmp_path / 'empty'}"):
        build_report([tmp_path / "empty"])
    with pytest.raises(ReportError, match="nowhere: no such file or directory"):
        build_report([tmp_path / "nowhere"])
    # Only search runs: nothing has a test metric, and the error says what to do.
    search_run(tmp_path / "s", "dnas", 10, None)
    with pytest.raises(ReportError, match=r"has test_ne: found 1 search runs.*retrain"):
        build_report([tmp_path / "s"])


def test_cli_exits_with_a_message_naming_the_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty")])
    assert exit_info.value.code == 1
    assert f"no results.json under {tmp_path / 'empty'}" in capsys.readouterr().err


def test_broken_and_incomplete_files_are_skipped_or_fatal_under_strict(runs, caplog):
    broken = write(runs / "broken", '{"model": "dnn",\n "flops": }')
    no_flops = write(runs / "no_flops", {"model": "dnn", "test": {"ne": 0.5}})
    odd = write(runs / "odd", {"model": "x", "flops": 3})
    with caplog.at_level(logging.WARNING, logger="rankitect.report"):
        report = build_report([runs])
    assert len(report.table) == 9
    reasons = {p.parent.name: r for p, r in report.skipped}
    assert reasons["broken"].startswith("not valid JSON") and "line 2" in reasons["broken"]
    assert reasons["no_flops"] == 'field "flops" is missing'
    assert reasons["odd"].startswith("neither a search run")
    for path in (broken, no_flops, odd):
        assert str(path / "results.json") in caplog.text
    with pytest.raises(ReportError, match=rf"{broken / 'results.json'}: not valid JSON"):
        build_report([runs / "broken"], strict=True)
    with pytest.raises(ReportError, match=r"no_flops/results.json: field \"flops\" is missing"):
        build_report([runs / "no_flops"], strict=True)
    with pytest.raises(ReportError, match=r"no usable results.json under .*\(1 skipped\)"):
        build_report([runs / "broken"])


def test_end_to_end_after_a_tiny_rankitect_train(tmp_path, capsys):
    """`rankitect-train`'s body on tiny synthetic data, then the report of its run directory."""
    run_dir = tmp_path / "train" / "lr"
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=lr", "logger=none", "data.source.n_train=2000", "data.source.n_val=500",
            "data.source.n_test=500", "data.batch_size=256", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        ])  # fmt: skip
    train(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    main([str(tmp_path / "train"), "-o", str(tmp_path / "report"), "--baseline", "lr"])
    row = pd.read_csv(tmp_path / "report" / "report.csv").iloc[0]
    assert (row["label"], row["kind"], row["on_front"]) == ("lr", "baseline", True)
    assert row["test_ne"] == pytest.approx(results["test"]["ne"])
    assert row["ne_gain_pct"] == pytest.approx(0.0)
    # LR on the synthetic data: 4 dense weights and a bias outside the embedding tables, and
    # one weight per sparse id (20 + 30 + 50 + 40 + 100 + 60 + 200 + 300 = 800) inside.
    assert (row["dense_params"], row["params"], row["flops"]) == (5, 805, 8)
    assert "| yes | **lr** | baseline |" in capsys.readouterr().out
