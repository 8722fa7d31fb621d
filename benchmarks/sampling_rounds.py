"""Figure 5a: best proxy NE against the number of architectures evaluated, random sampling vs
a random round followed by neural-predictor rounds (the predictor refitted on all results
before each round, the RL sampler proposing the round).

    python benchmarks/sampling_rounds.py --data frappe --space rankitect --budget 20000 \
        --initial 60 --rounds 4 --round-size 20 --out outputs/bench/sampling_rounds

The random arm evaluates ``initial + rounds * round_size`` random architectures; its curve is
averaged over 200 random orders (as the paper smooths its random round). The predictor arm
reuses the first ``initial`` of them as its random round. Every (arch, proxy NE) is saved, so
benchmarks/sampling_predictor_quality.py can study the predictor on these real scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sampling_common import plot, save, setup  # noqa: E402

from rankitect.search.sampling import (  # noqa: E402
    EarlyStopProxy,
    NeuralPredictor,
    RLSampler,
    arch_key,
    propose_random,
)


def running_min(x):
    return np.minimum.accumulate(np.asarray(x, dtype=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="frappe")
    ap.add_argument("--space", default="rankitect")
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--initial", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--round-size", type=int, default=20)
    ap.add_argument("--loss", default="pairwise")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--sampler-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/sampling_rounds"))
    args = ap.parse_args()
    dm, space = setup(args.data, args.space)
    proxy = EarlyStopProxy(space, dm, batch_size=512, lr=1e-3, seed=args.seed)
    total = args.initial + args.rounds * args.round_size
    t0 = time.perf_counter()
    rand = propose_random(space, total, set(), torch.Generator().manual_seed(args.seed))
    rand_ne = [proxy.evaluate(a, args.budget)["ne"] for a in rand]
    print(f"random arm: {len(rand)} evaluated ({time.perf_counter() - t0:.0f}s)")
    archs, ne = list(rand[: args.initial]), list(rand_ne[: args.initial])
    boundaries = [len(archs)]
    for r in range(1, args.rounds + 1):
        predictor = NeuralPredictor(space, ensemble=args.ensemble, loss=args.loss, seed=r)
        predictor.fit(archs, ne)
        sampler = RLSampler(space, steps=args.sampler_steps, seed=args.seed)
        new = sampler.propose(predictor, args.round_size, {arch_key(a) for a in archs}, r)
        new_ne = [proxy.evaluate(a, args.budget)["ne"] for a in new]
        archs += new
        ne += new_ne
        boundaries.append(len(archs))
        print(
            f"round {r}: best of round {min(new_ne):.4f}, best so far {min(ne):.4f}, "
            f"round median {np.median(new_ne):.4f} ({time.perf_counter() - t0:.0f}s)"
        )
    rng = np.random.default_rng(args.seed)
    random_curve = np.mean([running_min(rng.permutation(rand_ne)) for _ in range(200)], axis=0)
    pred_curve = running_min(ne)
    print(f"{'evaluated':>10}{'random':>10}{'predictor':>11}")
    for n in boundaries:
        print(f"{n:>10}{random_curve[n - 1]:>10.4f}{pred_curve[n - 1]:>11.4f}")
    save(
        args.out,
        "rounds",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "random_curve": random_curve.tolist(),
            "predictor_curve": pred_curve.tolist(),
            "boundaries": boundaries,
            "scores": [
                {"arch": a.to_dict(), "ne": v, "flops": space.flops(a), "arm": arm}
                for arm, xs, ys in (
                    ("random", rand, rand_ne),
                    ("predictor", archs[args.initial :], ne[args.initial :]),
                )
                for a, v in zip(xs, ys, strict=True)
            ],
        },
    )

    def draw(ax):
        n = np.arange(1, total + 1)
        ax.plot(n, random_curve, label="random (mean of 200 orders)")
        ax.plot(n, pred_curve, label=f"random round + predictor rounds ({args.loss})")
        for b in boundaries[:-1]:
            ax.axvline(b, color="red", lw=0.7, ls="--")
        ax.set_xlabel("architectures evaluated")
        ax.set_ylabel(f"best early-stop proxy NE ({args.budget} examples)")

    plot(args.out / "rounds.png", draw)
    print(f"wrote {args.out}/rounds.json and .png")


if __name__ == "__main__":
    main()
