"""Census of the bad-input tests (tests/test_bad_input.py): how many cases of each kind were
tried and how each ended (accepted valid / clear error / skipped and counted / crash).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bad_input_census.py

The tests draw their cases with ``derandomize=True``, so every run tries the same cases. A
failing test is reported and the census goes on with the next one.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_bad_input.py"


def load_tests():
    spec = importlib.util.spec_from_file_location("test_bad_input", TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    logging.disable(logging.WARNING)  # one warning per file with skipped rows: thousands here
    t = load_tests()
    runs = [(f"data rows {f}/{m}", t.test_bad_data_rows, (f, m)) for f in ("frappe", "criteo")
            for m in ("error", "skip")]  # fmt: skip
    runs.append(("arch JSON", t.test_bad_arch_json, ()))
    runs += [(f"config {c[0]}.{c[1]}", t.test_bad_config_values, (c,)) for c in t.CONFIG_CASES]
    runs += [(f"cli {c}", t.test_unknown_config_group_on_the_cli, (c, o, g))
             for c, o, g in (("search", "method=foo", "method"),
                             ("train", "trainer=foo", "trainer"))]  # fmt: skip
    failed = []
    start = time.perf_counter()
    for name, fn, args in runs:
        try:
            fn(*args)
        except Exception as err:  # a failing test: report it, keep counting the others
            failed.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t.test_missing_header_and_cache_after_failure(Path(tmp))
        except Exception as err:
            failed.append(f"cache after failure: {type(err).__name__}: {err}")
    seconds = time.perf_counter() - start

    outcomes = (t.ACCEPTED, t.CLEAR, t.SKIPPED, t.CRASH)
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(outcomes, 0))
    for (group, kind, outcome), n in t.CENSUS.items():
        table[group, kind][outcome] += n
    print(f"| group | kind | {' | '.join(outcomes)} |")
    print("|---|---|" + "---:|" * len(outcomes))
    totals = dict.fromkeys(outcomes, 0)
    for (group, kind), row in sorted(table.items()):
        print(f"| {group} | {kind} | " + " | ".join(str(row[o]) for o in outcomes) + " |")
        for o in outcomes:
            totals[o] += row[o]
    print("| **total** | | " + " | ".join(f"**{totals[o]}**" for o in outcomes) + " |")
    print(f"\n{sum(totals.values())} outcomes recorded in {seconds:.0f} s; failing tests: "
          f"{len(failed)}")  # fmt: skip
    for f in failed:
        print("  FAILED", f)
    return 1 if failed or totals[t.CRASH] else 0


if __name__ == "__main__":
    sys.exit(main())
