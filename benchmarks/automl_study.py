"""AutoML (architecture + hyper-parameters) vs random search vs architecture-only sampling.

Three arms, the same trial budget and the same learning-curve low-fidelity evaluator
(`method=automl`'s pilots, truncation and extrapolation), each a `rankitect-search` run:

- ``automl``: random round, then predictor + RL sampler rounds over the joint space;
- ``random``: every round random over the joint space (``method.strategy=random``);
- ``sampling``: predictor + RL sampler rounds over the architecture only, hyper-parameters
  at their defaults (no hparams block): the sampling method's proposer with this evaluator.

Each arm ends by training its ``finalists`` best fully; the table gives its best score (the
extrapolated NE it ranks by) and the best finalist's full-run validation NE. Then the AutoML
result is retrained with ``rankitect-train`` (BARS protocol on Frappe_x1, capped at
``--retrain-epochs``) and compared with the hand-tuned DNN baseline of docs/benchmarks.md.

    OMP_NUM_THREADS=1 python benchmarks/automl_study.py --root /path/to/frappe_x1 \
        --out outputs/bench/automl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from rankitect.cli.config import conf_dir
from rankitect.search.run import search

sys.path.insert(0, str(Path(__file__).parent))
from sampling_common import plot, save  # noqa: E402

# docs/benchmarks.md, "Frappe_x1 with the BARS protocol": the best hand-tuned baseline (DNN).
BASELINE = {"model": "dnn (BARS protocol, docs/benchmarks.md)", "auc": 0.9855, "logloss": 0.1426}
ARMS = ("automl", "random", "sampling")


def arm_config(arm: str, args: argparse.Namespace):
    overrides = [
        "method=automl",
        "data=frappe",
        f"data.source.root={args.root}",
        f"search_space={args.space}",
        f"seed={args.seed}",
        "logger=none",
        f"method.trials={args.trials}",
        f"method.pilots={args.pilots}",
        f"method.initial_size={args.initial}",
        f"method.round_size={args.round_size}",
        f"method.finalists={args.finalists}",
        f"method.low_fidelity.full_examples={args.full_examples}",
        f"method.low_fidelity.eval_every={args.eval_every}",
        f"method.low_fidelity.val_examples={args.val_examples}",
        f"method.low_fidelity.candidates=[{','.join(map(str, args.candidates))}]",
    ]
    if arm == "random":
        overrides.append("method.strategy=random")
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=["final=none", *overrides])
    if arm == "sampling":
        with open_dict(cfg):
            cfg.method.hparams = {}  # an override would merge into the default options
    return cfg


def retrain(run_dir: Path, args: argparse.Namespace) -> dict:
    """``rankitect-train experiment=frappe_bars`` with the found hyper-parameters."""
    overrides = (run_dir / "retrain_overrides.txt").read_text().split()
    out = args.out / "retrain"
    cmd = [
        str(Path(sys.executable).with_name("rankitect-train")),
        "experiment=frappe_bars",
        f"data.source.root={args.root}",
        *overrides,
        f"trainer.max_epochs={args.retrain_epochs}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
    ]
    print("retrain:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads((out / "results.json").read_text())
    return {
        "command": "rankitect-train " + " ".join(cmd[1:]),
        "test_auc": res["test"]["auc"],
        "test_logloss": res["test"]["logloss"],
        "val_ne": res["val"]["ne"],
        "epochs": res["epochs"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/frappe_x1")
    ap.add_argument("--space", default="rankitect")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--pilots", type=int, default=10)
    ap.add_argument("--initial", type=int, default=30)
    ap.add_argument("--round-size", type=int, default=20)
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--full-examples", type=int, default=200000)
    ap.add_argument("--eval-every", type=int, default=10000)
    ap.add_argument("--val-examples", type=int, default=10000)
    ap.add_argument(
        "--candidates", type=int, nargs="+", default=[20000, 30000, 40000, 60000, 80000]
    )
    ap.add_argument("--retrain-epochs", type=int, default=10, help="0: no retrain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/automl"))
    args = ap.parse_args()
    args.root = str(Path(args.root).resolve())
    torch.set_num_threads(1)

    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "arms": {}}
    for arm in args.arms:
        run_dir = args.out / arm
        start = time.perf_counter()
        res = search(arm_config(arm, args), run_dir)
        curve = [v for _, v in res["curves"]["best_score_vs_trials"]]
        summary["arms"][arm] = {
            "best_score": curve[-1],
            "best_full_ne": res["ne"],
            "hparams": res["hparams"],
            "flops": res["flops"],
            "truncation": res["truncation"]["examples"],
            "truncation_taus": res["truncation"]["taus"],
            "fit_fallbacks": res["fit_fallbacks"],
            "low_fidelity_trials": res["low_fidelity_trials"],
            "trials": len(curve),
            "curve": curve,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{arm}: {json.dumps({k: v for k, v in summary['arms'][arm].items() if k != 'curve'})}"
        )
        save(args.out, "automl_study", summary)

    print(
        f"\n{'arm':<10} {'trials':>6} {'trunc':>7} {'best score':>11} {'best full NE':>13} {'s':>7}"
    )
    for arm, a in summary["arms"].items():
        print(
            f"{arm:<10} {a['trials']:>6} {a['truncation']:>7} {a['best_score']:>11.4f} "
            f"{a['best_full_ne']:>13.4f} {a['seconds']:>7.0f}"
        )

    def draw(ax):
        for arm, a in summary["arms"].items():
            ax.plot(range(1, len(a["curve"]) + 1), a["curve"], label=arm)
        ax.set_xlabel("evaluated trials")
        ax.set_ylabel("best score (extrapolated validation NE)")
        ax.set_title(f"Frappe_x1, {args.space} space, {args.trials} trials")

    plot(args.out / "automl_study.png", draw)

    if args.retrain_epochs and "automl" in summary["arms"]:
        summary["retrain"] = retrain(args.out / "automl", args)
        summary["baseline"] = BASELINE
        r = summary["retrain"]
        print(
            f"\nAutoML best retrained ({r['epochs']} epochs, cap {args.retrain_epochs}): test AUC "
            f"{r['test_auc']:.4f}, log loss {r['test_logloss']:.4f}; hand-tuned {BASELINE['model']}"
            f": AUC {BASELINE['auc']:.4f}, log loss {BASELINE['logloss']:.4f}"
        )
    save(args.out, "automl_study", summary)


if __name__ == "__main__":
    main()
