"""Criteo reader speed against pandas, cached loads, and DataLoader throughput.

    python benchmarks/bench_reader.py --rows 1000000 --repeats 3

1. Writes a seeded ``--rows``-row Criteo TSV (no header) to a temporary folder: 13 integer
   features with Criteo-like missing rates and some negatives, 26 categorical features as
   8-hex-digit hashes with Zipf-like popularity and missing rates.
2. Times ``pandas.read_csv(path, sep="\\t", header=None)`` (parsing only: type inference, one
   Python string per categorical cell) against `CriteoReader(path).load()` with hashing and
   with a frequency vocabulary (parse, validation, log1p, ids, random split; no cache), runs
   interleaved so both see the same machine load; reports min and median and the ratio.
3. Times a cached load: `CTRDataModule.setup()` on an existing cache entry (memory-mapped).
4. DataLoader throughput of `CTRDataModule` (examples/s over one training epoch) on the
   synthetic data and, if found, Frappe_x1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rankitect.data import CategoricalCSVReader, CriteoReader, CTRDataModule, SyntheticCTR
from rankitect.data.delimited import mix64

# Missing rates of I1..I13 and C1..C26 and per-field cardinalities, roughly those of the
# Criteo Kaggle training set (the largest capped: a 1M-row sample sees few of their values).
INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]
CAT_MISSING = [0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0, 0, 0.03, 0]
CAT_MISSING += [0, 0, 0.03, 0, 0, 0.44, 0.44, 0.03, 0.76, 0, 0.03, 0.44, 0.44]
CAT_CARD = [1460, 583, 10**7, 2 * 10**6, 305, 24, 12517, 633, 3, 93145, 5683, 8 * 10**6, 3194]
CAT_CARD += [27, 14992, 5 * 10**6, 10, 5652, 2173, 4, 7 * 10**6, 18, 15, 286181, 105, 142572]
HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def write_criteo_tsv(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {"label": (rng.random(rows) < 0.26).astype(np.int8)}
    for j, miss in enumerate(INT_MISSING):
        v = np.floor(rng.lognormal(1.0 + 0.25 * j, 1.6, rows)).astype(np.int64)
        if j == 1:  # I2 holds small negative values in the real data
            v = np.where(rng.random(rows) < 0.05, -rng.integers(1, 4, rows), v)
        col = pd.array(v, dtype="Int64")
        col[rng.random(rows) < miss] = pd.NA
        cols[f"I{j + 1}"] = col
    for j, (miss, card) in enumerate(zip(CAT_MISSING, CAT_CARD, strict=True)):
        ids = np.floor(np.exp(rng.random(rows) * np.log(card))).astype(np.uint64)  # ~1/id
        h = (mix64(ids ^ np.uint64(j << 40)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        digits = HEX[(h[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF]
        values = digits.view("S8").ravel().astype(str).astype(object)
        values[rng.random(rows) < miss] = None
        cols[f"C{j + 1}"] = values
    pd.DataFrame(cols).to_csv(path, sep="\t", header=False, index=False)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def throughput(dm: CTRDataModule) -> float:
    dm.setup("fit")
    loader = dm.train_dataloader()
    t, n = time.perf_counter(), 0
    for _, _, label in loader:
        n += len(label)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--frappe", type=Path, default=Path("../shared/data/frappe_x1"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpus={os.cpu_count()} torch_threads={args.threads} load_avg={os.getloadavg()}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "criteo.tsv"
        t = time.perf_counter()
        write_criteo_tsv(path, args.rows, args.seed)
        size_mb = path.stat().st_size / 2**20
        print(f"wrote {args.rows:,} rows, {size_mb:.0f} MiB, in {time.perf_counter() - t:.1f} s")

        fns = {
            "pandas.read_csv": lambda: pd.read_csv(path, sep="\t", header=None),
            "CriteoReader(hash)": lambda: CriteoReader(path=path, encoding="hash").load(),
            "CriteoReader(frequency)": lambda: CriteoReader(path=path, encoding="frequency").load(),
        }
        times = interleaved(fns, args.repeats)
        base = statistics.median(times["pandas.read_csv"])
        print(f"\n{'cold load (no cache)':28s} {'min s':>7s} {'median s':>9s} {'vs pandas':>10s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:28s} {min(ts):7.2f} {med:9.2f} {base / med:9.2f}x")

        cache_dir = Path(tmp) / "cache"
        reader = CriteoReader(path=path, encoding="hash")
        CTRDataModule(reader, cache_dir=cache_dir).prepare_data()
        cached = interleaved(
            {"setup": lambda: CTRDataModule(reader, cache_dir=cache_dir).setup("fit")},
            args.repeats,
        )["setup"]
        print(f"{'cached setup (mmap)':28s} {min(cached):7.3f} {statistics.median(cached):9.3f}")

    print(f"\n{'DataLoader, one epoch':40s} {'examples/s':>12s}")
    for bs in (1024, 4096):
        dm = CTRDataModule(SyntheticCTR(), batch_size=bs, cache=False)
        print(f"{f'synthetic (150k rows), batch {bs}':40s} {throughput(dm):12,.0f}")
    if (args.frappe / "train.csv").is_file():
        dm = CTRDataModule(CategoricalCSVReader(root=args.frappe), batch_size=4096, cache=False)
        print(f"{'frappe_x1 train (202k rows), batch 4096':40s} {throughput(dm):12,.0f}")


if __name__ == "__main__":
    main()
