"""`rankitect-report`: the Pareto front of FLOPs against NE (or another metric) over the runs
under some directories, as a PNG, a CSV and a Markdown table (docs/report.md)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from rankitect.report import METRICS, ReportError, build_report, markdown, write_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankitect-report",
        description="Collect every results.json under DIR... (run or multirun directories, "
        "searched recursively), plot the chosen metric against FLOPs with its Pareto front and "
        "write pareto.png, report.csv and report.md.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or multirun directory")
    p.add_argument(
        "-o", "--out-dir", type=Path, default=None, help="where to write (default: the first DIR)"
    )
    p.add_argument(
        "--metric",
        default="test_ne",
        choices=list(METRICS),
        help="quality axis of the plot and the front (default: test_ne)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="NAME",
        help="model name of a training run (e.g. dnn): adds the NE gain in %% over it",
    )
    p.add_argument("--title", default=None, help="title of the plot and the Markdown table")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on an unreadable or unusable results.json instead of skipping it",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    first = args.dirs[0]
    out_dir = args.out_dir or (first.parent if first.is_file() else first)
    try:
        report = build_report(args.dirs, args.metric, args.baseline, args.strict)
        paths = write_report(report, out_dir, args.title)
    except ReportError as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    print(markdown(report, args.title))
    for what, path in paths.items():
        print(f"wrote {what}: {path}")


if __name__ == "__main__":
    main()
