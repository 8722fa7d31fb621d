"""Peak memory of one DNAS training step, with and without activation checkpointing.

    python benchmarks/bench_dnas_memory.py --batches 256,1024

Each configuration runs in its own subprocess: it builds a `DNASModule` on the shipped
Rankitect space (default synthetic data's features) with its `FlopsRegularizer`, takes the
resident set size (RSS) once the model, optimisers and a random batch exist, runs one training
step (Gumbel-softmax relaxation, soft supernet forward, BCE + FLOPs term, backward, both
optimiser steps), and reports the peak RSS (``getrusage`` max RSS) above that baseline, and
the step's wall time (best of ``--repeats`` steps).

glibc keeps freed blocks in its heap and hands out later, same-sized allocations from there,
so the default allocator's RSS overstates what is live; the children therefore run with
``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks are mmap-ed and unmapped when freed), and
``--default-malloc`` shows the unadjusted figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(batch: int, checkpointing: bool, sampling: str, repeats: int) -> dict:
    import torch

    from rankitect.callbacks import FlopsRegularizer
    from rankitect.data import SyntheticCTR
    from rankitect.lit import DNASModule
    from rankitect.space import load_space

    torch.set_num_threads(1)
    spec = SyntheticCTR().spec
    space = load_space("rankitect", spec)
    torch.manual_seed(0)
    module = DNASModule(space, sampling=sampling, activation_checkpointing=checkpointing)
    reg = FlopsRegularizer(None)
    reg.on_fit_start(None, module)
    opt_w = torch.optim.Adam(module.supernet.parameters(), lr=1e-3)
    opt_theta = torch.optim.Adam([module.arch.logits], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(batch, spec.n_dense, generator=gen)
    sparse = torch.stack(
        [torch.randint(c, (batch,), generator=gen) for c in spec.sparse_cardinalities], 1
    )
    label = (torch.rand(batch, generator=gen) < 0.25).float()

    def step(i: int) -> None:  # a function, so nothing of the step outlives it (as in Lightning)
        relaxation = module.relax(i, batch)
        logits = module.soft_forward(dense, sparse, relaxation.samples)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
        loss = loss + reg.loss(module, relaxation)
        opt_w.zero_grad()
        opt_theta.zero_grad()
        loss.backward()
        opt_w.step()
        opt_theta.step()

    base = rss_mb()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"baseline_mb": base, "peak_above_baseline_mb": peak - base, "step_s": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--sampling", choices=("batch", "example"), default="batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BATCH", "CHECKPOINTING"))
    args = parser.parse_args()
    if args.child:
        batch, ckpt = int(args.child[0]), args.child[1] == "on"
        print(json.dumps(child(batch, ckpt, args.sampling, args.repeats)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    print(
        f"one DNAS step on the rankitect space, sampling={args.sampling}, "
        f"{'default malloc' if args.default_malloc else 'MALLOC_MMAP_THRESHOLD_=65536'}"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        row = {}
        for ckpt in ("off", "on"):
            cmd = [sys.executable, __file__, "--child", str(batch), ckpt]
            cmd += ["--sampling", args.sampling, "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            row[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])
        off, on = row["off"], row["on"]
        print(
            f"  batch {batch:5d}: peak RSS above baseline {off['peak_above_baseline_mb']:7.0f} MB "
            f"without, {on['peak_above_baseline_mb']:7.0f} MB with checkpointing "
            f"({off['peak_above_baseline_mb'] / on['peak_above_baseline_mb']:.1f}x less); "
            f"step {off['step_s']:.2f} s vs {on['step_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
