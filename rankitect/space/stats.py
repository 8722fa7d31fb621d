"""Statistics of random architectures of a space (the paper's Figure 3).

``python -m rankitect.space.stats --space rankitect --n 10000 --out figs/`` samples ``n``
architectures from the space's prior and plots histograms of FLOPs, dense parameters, Choices
used (reachable from the output) and connections, with the seed model as a dashed line.
Only analytic costs are computed; no model is built.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from rankitect.data.spec import FeatureSpec
from rankitect.space.arch import Arch
from rankitect.space.cost import arch_cost
from rankitect.space.space import SearchSpace
from rankitect.space.spaces import load_space

STATS = ("flops", "dense_params", "choices_used", "connections")
LABELS = {
    "flops": "FLOPs per example",
    "dense_params": "# dense parameters",
    "choices_used": "# Choices used",
    "connections": "# connections",
}


def arch_stats(space: SearchSpace, arch: Arch) -> dict[str, int]:
    """FLOPs, dense parameters, Choices reachable from the output, and their input edges
    (distinct inputs read by each reachable Choice, raw inputs included). A space without
    Choices (the DHEN space) has the first two only."""
    if not isinstance(space, SearchSpace):
        return {"flops": space.flops(arch), "dense_params": space.params(arch)}
    cost = arch_cost(space, arch)
    used = arch.reachable()
    return {
        "flops": cost.flops,
        "dense_params": cost.params,
        "choices_used": len(used),
        "connections": sum(len(arch.choices[c].sources) for c in used),
    }


def sample_stats(space: SearchSpace, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Statistics of ``n`` architectures drawn from the decisions' priors."""
    values = space.sample_values(torch.Generator().manual_seed(seed), n)
    rows = [arch_stats(space, space.decode(v)) for v in values]
    return {k: np.array([r[k] for r in rows], dtype=np.int64) for k in rows[0]}


def plot_stats(
    stats: dict[str, np.ndarray], seed: dict[str, int] | None, path: Path, title: str
) -> None:
    """Four histograms; the seed model's values as dashed vertical lines.

    Drawn on a bare `Figure` (Agg canvas), leaving pyplot's global backend alone.
    """
    fig = Figure(figsize=(4 * len(stats), 3.2))
    axes = fig.subplots(1, len(stats))
    for ax, key in zip(axes, stats, strict=True):
        data = stats[key]
        discrete = key in ("choices_used", "connections")
        bins = np.arange(data.min() - 0.5, data.max() + 1.5) if discrete else 40
        ax.hist(data, bins=bins, color="tab:blue", alpha=0.8)
        if seed is not None:
            ax.axvline(seed[key], color="black", linestyle="--", label="seed model")
        ax.set_xlabel(LABELS[key])
        ax.set_ylabel("# architectures")
    if seed is not None:
        axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def summary(space: SearchSpace, stats: dict[str, np.ndarray], seed: dict[str, int] | None) -> str:
    lines = [
        f"space {space.name}: "
        + (f"{space.num_choices} Choices, " if isinstance(space, SearchSpace) else "")
        + f"{space.num_decisions} decisions, "
        f"size 10^{space.log10_size:.2f} architectures, {len(stats['flops'])} samples"
    ]
    for key in stats:
        q = np.percentile(stats[key], [5, 50, 95])
        line = f"  {LABELS[key]:>20}: p5 {q[0]:,.0f}  median {q[1]:,.0f}  p95 {q[2]:,.0f}"
        if seed is not None:
            line += f"  seed {seed[key]:,}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="rankitect", help="shipped name or YAML path")
    parser.add_argument("--n", type=int, default=10_000, help="architectures to sample")
    parser.add_argument("--out", type=Path, default=Path("figs"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-dense", type=int, default=13, help="dense features of the data")
    parser.add_argument("--n-sparse", type=int, default=10, help="sparse fields of the data")
    parser.add_argument("--cardinality", type=int, default=1000, help="ids per sparse field")
    args = parser.parse_args(argv)
    spec = FeatureSpec(args.n_dense, (args.cardinality,) * args.n_sparse)
    space = load_space(args.space, spec)
    stats = sample_stats(space, args.n, args.seed)
    seed = arch_stats(space, space.seed_arch()) if space.has_seed else None
    path = args.out / f"{space.name}_stats.png"
    title = f"{space.name}: {args.n} random architectures (size 10^{space.log10_size:.1f})"
    plot_stats(stats, seed, path, title)
    print(summary(space, stats, seed))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
