"""A grown space's seed architecture against the baseline it is grown from, over seeds.

    python benchmarks/seed_vs_baseline.py --space rankitect_frappe --seeds 0 1 2 \
        --out /tmp/bench13 experiment=frappe_bars
    python benchmarks/seed_vs_baseline.py --space rankitect_dlrm --dense --seeds 0 1 2 \
        --out /tmp/bench13dlrm_synth        # the built-in synthetic data (dense features)

Per seed it runs `rankitect-train model=<grown_from>` and `rankitect-train model=arch` on the
space's seed architecture under the same overrides (the BARS protocol with
``experiment=frappe_bars``), each in ``<out>/<label>_s<seed>``; a run with a ``results.json``
is not run again, so the script resumes after a stop. It prints test AUC and log loss per run
and their mean and spread (sample standard deviation) per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from rankitect.data import FeatureSpec
from rankitect.space import load_space


def train(run_dir: Path, overrides: list[str]) -> dict:
    if not (run_dir / "results.json").is_file():
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rankitect.cli.train",
                    *overrides,
                    "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={run_dir}",
                ],
                check=True,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
    return json.loads((run_dir / "results.json").read_text())


def seed_arch_file(space_name: str, dense: bool, out: Path) -> tuple[Path, str]:
    """Write the space's seed architecture. It depends on the data only through whether it has
    dense and sparse features, so a stand-in spec with the same presence gives it (two sparse
    fields: a dot block needs two rows)."""
    space = load_space(space_name, FeatureSpec(int(dense), (2, 2)))
    if not space.grown_from:
        raise SystemExit(f"space {space_name!r} names no baseline (grown_from)")
    path = out / f"seed-{space_name}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(space.seed_arch().to_json())
    return path, space.grown_from


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="rankitect_frappe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/seed_vs_baseline"))
    parser.add_argument("--dense", action="store_true", help="the data has dense features")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    arch_file, baseline = seed_arch_file(args.space, args.dense, args.out)
    models = {
        baseline: [f"model={baseline}"],
        f"seed-{args.space}": [
            "model=arch",
            f"model.space={args.space}",
            f"model.arch_file={arch_file}",
        ],
    }
    print("| model | seed | test AUC | test logloss | epochs | FLOPs/example | params |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for label, model in models.items():
        aucs, losses = [], []
        for seed in args.seeds:
            r = train(args.out / f"{label}_s{seed}", [*args.overrides, *model, f"seed={seed}"])
            aucs.append(r["test"]["auc"])
            losses.append(r["test"]["logloss"])
            print(
                f"| {label} | {seed} | {aucs[-1]:.4f} | {losses[-1]:.4f} | {r['epochs']} | "
                f"{r['flops']:,} | {r['params']:,} |",
                flush=True,
            )
        summary[label] = (aucs, losses)
    print("\n| model | test AUC mean ± sd | test logloss mean ± sd | seeds |")
    print("|---|---|---|---|")
    for label, (aucs, losses) in summary.items():
        print(
            f"| {label} | {statistics.mean(aucs):.4f} ± {sd(aucs):.4f} | "
            f"{statistics.mean(losses):.4f} ± {sd(losses):.4f} | {len(aucs)} |"
        )
    (a_base, l_base), (a_seed, l_seed) = summary.values()
    print(
        f"\nmean difference (seed - {baseline}): AUC "
        f"{statistics.mean(a_seed) - statistics.mean(a_base):+.4f}, log loss "
        f"{statistics.mean(l_seed) - statistics.mean(l_base):+.4f}"
    )


if __name__ == "__main__":
    main()
