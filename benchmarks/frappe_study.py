"""The study of issue 14: every method's final model against the baselines on Frappe_x1.

    python benchmarks/frappe_study.py --out /tmp/study --seeds 0 1 2 \
        --methods oneshot_rl dnas sampling automl --baselines dnn deepfm dcnv2 dlrm

Per seed, each baseline is trained once with the BARS protocol
(`rankitect-train experiment=frappe_bars model=<b> seed=<s>`, in ``<out>/<b>_s<s>``), then each
method runs the whole pipeline (`rankitect-search experiment=frappe_search method=<m>
seed=<s>`: search in the space grown from the DNN, finalists, successive halving, the winner
retrained with the BARS protocol) with those baseline runs read by path, in
``<out>/<m>_s<s>``. Finished runs are read back, so the script resumes after a stop. It prints
per row the mean and spread over seeds of test AUC, log loss and FLOPs, and each method's wall
seconds (search + finalize) as a multiple of one DNN training run's (run one job at a time, or
the ratio means little).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str], run_dir: Path) -> dict:
    results = run_dir / "results.json"
    if not results.is_file() or (
        cmd[2] == "rankitect.cli.search" and "final" not in json.loads(results.read_text())
    ):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with run_dir.with_suffix(".log").open("w") as fh:
            subprocess.run(
                [*cmd, f"hydra.run.dir={run_dir}"], check=True, stdout=fh, stderr=subprocess.STDOUT
            )
    return json.loads(results.read_text())


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/frappe_study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=["oneshot_rl", "dnas", "sampling", "automl"]
    )
    parser.add_argument("--baselines", nargs="+", default=["dnn", "deepfm", "dcnv2", "dlrm"])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the searches")
    args = parser.parse_args()
    py = [sys.executable, "-m"]
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        paths = []
        for b in args.baselines:
            run_dir = args.out / f"{b}_s{seed}"
            r = run(
                [
                    *py,
                    "rankitect.cli.train",
                    "experiment=frappe_bars",
                    f"model={b}",
                    f"seed={seed}",
                    "trainer.enable_progress_bar=false",
                ],
                run_dir,
            )
            rows.setdefault(b, []).append(
                {"test": r["test"], "flops": r["flops"], "cpu": r.get("fit_seconds")}
            )
            paths.append(str((run_dir / "results.json").resolve()))
        for m in args.methods:
            r = run(
                [
                    *py,
                    "rankitect.cli.search",
                    "experiment=frappe_search",
                    f"method={m}",
                    f"seed={seed}",
                    f"final.seeds=[{seed}]",
                    f"final.baselines=[{','.join(paths)}]",
                    "trainer.enable_progress_bar=false",
                    *args.overrides,
                ],
                args.out / f"{m}_s{seed}",
            )
            final = r["final"]
            rows.setdefault(m, []).append(
                {
                    "test": final["test"],
                    "flops": final["flops"],
                    "cpu": r["search_seconds"] + r["final_seconds"],
                }
            )
            print(
                f"{m} seed {seed}: test AUC {r['final']['test']['auc']:.4f}, log loss "
                f"{r['final']['test']['logloss']:.4f}, {r['final']['flops']:,} FLOPs",
                flush=True,
            )
    dnn_fit = statistics.mean(x["cpu"] for x in rows.get("dnn", [{"cpu": float("nan")}]))
    print(
        "\n| row | test AUC | test log loss | FLOPs/example | pipeline wall s / DNN fit wall s "
        "| seeds |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        cost = (
            f"{statistics.mean(x['cpu'] for x in runs) / dnn_fit:.1f}"
            if name in args.methods
            else "-"
        )
        print(
            f"| {name} | {spread([x['test']['auc'] for x in runs])} | "
            f"{spread([x['test']['logloss'] for x in runs])} | "
            f"{statistics.mean(x['flops'] for x in runs):,.0f} | {cost} | {len(runs)} |"
        )


if __name__ == "__main__":
    main()
