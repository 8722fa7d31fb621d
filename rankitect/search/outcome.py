"""What every search method hands back, and how a search run is written to disk.

One-shot RL and DNAS both end with a `SearchOutcome`; `write_search_results` turns it into
``best_arch.json``, ``results.json`` and ``curves.png`` so later tools treat methods alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankitect.io import atomic_write_text, write_json
from rankitect.space.arch import Arch
from rankitect.space.space import SearchSpace


@dataclass
class SearchOutcome:
    """The found architecture, the final decision probabilities and the search's curves.

    ``curves`` maps a name (``reward``, ``entropy``, ``flops``, ...) to ``(step, value)`` pairs.
    """

    arch: Arch
    probs: Sequence[torch.Tensor]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def decision_probs(space: SearchSpace, probs: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    return {
        d.name: [round(float(x), 6) for x in p.detach().cpu()]
        for d, p in zip(space.decisions, probs, strict=True)
    }


def plot_curves(path: Path, curves: dict[str, list[tuple[int, float]]], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, pts in curves.items() if pts]
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * max(len(names), 1)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        steps, values = zip(*curves[name], strict=True)
        ax.plot(steps, values, lw=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_search_results(
    output_dir: str | Path,
    space: SearchSpace,
    outcome: SearchOutcome,
    method: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write ``best_arch.json``, ``results.json`` and ``curves.png`` into ``output_dir``."""
    output_dir = Path(output_dir)
    arch = space.validate(outcome.arch)
    atomic_write_text(output_dir / "best_arch.json", arch.to_json() + "\n")
    results = {
        "kind": "search",
        "method": method,
        "space": space.name,
        "model": f"{method}:{space.name}",
        "flops": int(space.flops(arch)),
        "params": int(space.params(arch)),
        "arch": arch.to_dict(),
        "decision_probs": decision_probs(space, outcome.probs),
        "curves": {k: [[int(s), float(v)] for s, v in pts] for k, pts in outcome.curves.items()},
        **outcome.extra,
        **meta,
    }
    write_json(output_dir / "results.json", results)
    if any(outcome.curves.values()):
        plot_curves(output_dir / "curves.png", outcome.curves, f"{method} on {space.name}")
    return results
