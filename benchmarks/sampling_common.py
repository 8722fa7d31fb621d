"""Shared set-up of the sampling-based search studies (benchmarks/sampling_*.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rankitect.cli.config import conf_dir
from rankitect.space import load_space


def setup(data: str, space: str, overrides: list[str] = ()) -> tuple[Any, Any]:
    """The data module (set up) and search space of ``conf/data/<data>.yaml`` and
    ``conf/search_space/<space>.yaml``."""
    torch.set_num_threads(1)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=[f"data={data}", f"search_space={space}", *overrides])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm, load_space(cfg.search_space, dm.feature_spec)


def save(out: Path, name: str, payload: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
