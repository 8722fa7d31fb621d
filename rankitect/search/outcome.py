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

    ``curves`` maps a name (``reward``, ``entropy``, ``flops``, ...) to ``(step, value)`` pairs;
    ``candidates``: the method's own ranking of distinct architectures, best first, when it has
    one (else the finalists come from ``probs``, see `rankitect.search.finalize`).
    """

    arch: Arch
    probs: Sequence[torch.Tensor]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    candidates: list[Arch] = field(default_factory=list)


def decision_probs(space: SearchSpace, probs: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    return {
        d.name: [round(float(x), 6) for x in p.detach().cpu()]
        for d, p in zip(space.decisions, probs, strict=True)
    }


def curves_figure(
    curves: dict[str, list[tuple[int, float]]],
    title: str,
    warmup_steps: int | None = None,
    target_flops: float | None = None,
) -> Any:
    """One panel per non-empty curve against the step. The warm-up (steps before the search
    moves its distribution, where some curves have no points) is shaded on every panel, and
    the FLOPs target is a line on every FLOPs panel."""
    from matplotlib.figure import Figure

    names = [n for n, pts in curves.items() if pts]
    fig = Figure(figsize=(7, 2.2 * max(len(names), 1)))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        steps, values = zip(*curves[name], strict=True)
        ax.plot(steps, values, lw=1)
        if warmup_steps:
            ax.axvspan(0, warmup_steps, color="0.85", zorder=0, label="warm-up")
            ax.set_xlim(left=0)
        if target_flops is not None and "flops" in name:
            ax.axhline(target_flops, color="tab:red", ls="--", lw=1, label="FLOPs target")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(path: Path, figure: Any) -> Path:
    """Write ``figure`` (from `curves_figure`) as a PNG at ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
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
        figure = curves_figure(
            outcome.curves,
            f"{method} on {space.name}",
            warmup_steps=outcome.extra.get("warmup_steps"),
            target_flops=outcome.extra.get("target_flops"),
        )
        plot_curves(output_dir / "curves.png", figure)
    return results


def plot_final(path: Path, results: dict[str, Any]) -> Path:
    """Test NE against FLOPs of the retrained found model and the baselines, with the FLOPs
    target; the finalists' short-retrain validation NE in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    final = results["final"]
    ax.scatter([final["flops"]], [final["test"]["ne"]], marker="*", s=160, c="C3",
               label="found (retrained)", zorder=3)
    for i, (name, b) in enumerate(results.get("baselines", {}).items()):
        ax.scatter([b["flops"]], [b["test"]["ne"]], marker="o", c=f"C{i % 3}", label=name)
    if results.get("target_flops"):
        ax.axvline(results["target_flops"], ls="--", c="grey", lw=1, label="FLOPs target")
    ax.set_xlabel("FLOPs / example")
    ax.set_ylabel("test NE (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    flops = [f["flops"] for f in results.get("final_candidates", [])]
    for rung in results.get("final_halving", []):
        bx.scatter([flops[i] for i in rung["finalists"]], rung["val_ne"], s=18,
                   label=f"{rung['epochs']} epoch(s)")
    bx.set_xlabel("FLOPs / example")
    bx.set_ylabel("val NE after a short retrain")
    bx.set_title("finalists (successive halving)", fontsize=9)
    if results.get("final_halving"):
        bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    fig.suptitle(f"{results['method']} on {results['space']}: found model vs baselines")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
