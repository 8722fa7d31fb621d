"""Frappe_x1 with the BARS protocol: test AUC / log loss of the baselines next to BARS.

    python benchmarks/frappe_bars.py --models dnn deepfm dlrm dcnv2 --out outputs/frappe_bars

Each model runs `rankitect-train experiment=frappe_bars model=<name>` in its own run directory;
the table compares the test figures with the BARS Frappe_x1 leaderboard.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# BARS Frappe_x1 leaderboard (test AUC, log loss); ../shared/data/README.md.
BARS = {
    "lr": (0.9356, 0.3076),
    "dnn": (0.9833, 0.1622),
    "deepfm": (0.9842, 0.1482),
    "dlrm": (0.9840, 0.1444),
    "dcnv2": (0.9845, 0.1491),
}


def run(model: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / model
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rankitect.cli.train", "experiment=frappe_bars", f"model={model}",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra],
        check=True,
    )
    results = json.loads((run_dir / "results.json").read_text())
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dnn", "deepfm", "dlrm", "dcnv2"])
    parser.add_argument("--out", type=Path, default=Path("outputs/frappe_bars"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        r = run(model, args.out, args.overrides)
        auc, logloss = r["test"]["auc"], r["test"]["logloss"]
        bars_auc, bars_ll = BARS[model]
        rows.append(
            f"| {model} | {auc:.4f} | {bars_auc:.4f} | {auc - bars_auc:+.4f} | {logloss:.4f} | "
            f"{bars_ll:.4f} | {r['epochs']} | {r['flops']:,} | {r['params']:,} | "
            f"{r['wall_seconds']:.0f} |"
        )
    print("| model | test AUC | BARS AUC | diff | test logloss | BARS logloss | epochs | "
          "FLOPs/example | params | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
