"""Peak memory of streaming Criteo files of 1M and 10M rows: it should not grow with the file.

    OMP_NUM_THREADS=1 python benchmarks/bench_stream_rss.py --sizes 1000000 10000000

1. Writes a seeded ``--base-rows``-row Criteo TSV with ``bench_reader.write_criteo_tsv``
   (Criteo-like missing rates, negative integers, 8-hex-digit hashes) in a temporary folder and
   concatenates copies of it into a file of each size (so rows repeat every ``--base-rows``
   rows, which changes neither the parse work nor the memory). The files are deleted at exit.
2. For each file and mode, a fresh child process makes one full pass over
   `StreamingCriteoDataset` (rank 0 of 1, no workers, ``--batch-size`` rows per batch) and
   reports rows/s, its RSS before the pass (after imports) and its peak RSS (``VmHWM``).
3. For reference, a child loads the smallest file whole with ``CriteoReader(encoding="hash")``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(path: str, mode: str, batch_size: int) -> None:
    """One pass in this (fresh) process; prints a JSON line with the figures."""
    import torch

    from rankitect.data import CriteoReader, StreamingCriteoDataset

    torch.set_num_threads(1)
    rss_before = _status_kib("VmRSS")
    t = time.perf_counter()
    if mode == "in-memory":
        data = CriteoReader(path=path, encoding="hash", split=(0.8, 0.1, 0.1)).load()
        rows = sum(len(s) for s in data.splits.values())
    else:
        ds = StreamingCriteoDataset(
            path, batch_size, rank=0, world_size=1, shuffle=mode == "shuffle", seed=0
        )
        rows = sum(len(label) for _, _, label in ds)
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "rss_before_mib": rss_before / 1024,
                "peak_rss_mib": _status_kib("VmHWM") / 1024,
            }
        )
    )


def run_child(path: Path, mode: str, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--mode", mode]
    cmd += ["--batch-size", str(batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--base-rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--modes", nargs="+", default=["plain", "shuffle"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mode, args.batch_size)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_reader import write_criteo_tsv

    print(f"cpus={os.cpu_count()} load_avg={os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.tsv"
        t = time.perf_counter()
        write_criteo_tsv(base, args.base_rows, args.seed)
        print(f"wrote the {args.base_rows:,}-row base file in {time.perf_counter() - t:.1f} s")
        files = {}
        for n in args.sizes:
            if n % args.base_rows:
                raise SystemExit(f"--sizes must be multiples of --base-rows ({args.base_rows})")
            files[n] = Path(tmp) / f"criteo_{n}.tsv"
            with open(files[n], "wb") as out:
                for _ in range(n // args.base_rows):
                    with open(base, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 24)
        header = f"{'file':>22s} {'mode':>9s} {'rows/s':>10s} {'s':>7s} {'RSS before':>11s} "
        print("\n" + header + f"{'peak RSS':>9s}")
        runs = [(n, mode) for n in args.sizes for mode in args.modes]
        runs.append((min(args.sizes), "in-memory"))
        for n, mode in runs:
            r = run_child(files[n], mode, args.batch_size)
            assert r["rows"] == n, r
            size = f"{n:,} rows, {files[n].stat().st_size / 2**20:,.0f} MiB"
            print(
                f"{size:>22s} {mode:>9s} {n / r['seconds']:10,.0f} {r['seconds']:7.1f} "
                f"{r['rss_before_mib']:8.0f} MiB {r['peak_rss_mib']:5.0f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
