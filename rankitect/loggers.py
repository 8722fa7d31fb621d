"""Experiment loggers of ``conf/logger/`` where Lightning's own need a fix, and what a search
logs to wandb at its end."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's `WandbLogger`, without the ``anonymous=None`` it passes to every
    ``wandb.init``: wandb >= 0.19 deprecates the setting and warns "The anonymous setting has
    no effect" whenever it is given, even as None."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


# What a search's artifact holds: the found architecture and the search's results.
ARTIFACT_FILES = ("best_arch.json", "results.json")


def log_search_artifact(logger: Any, output_dir: Path, summary: Mapping[str, Any]) -> bool:
    """On a wandb logger: ``best_arch.json`` and ``results.json`` of ``output_dir`` as one
    artifact of type ``architecture``, named ``arch-<run id>`` (``summary`` as its metadata),
    and ``summary`` in the run's summary. Other loggers: nothing. Returns whether it logged."""
    if not isinstance(logger, _LightningWandbLogger):
        return False
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"arch-{run.id}", type="architecture", metadata=dict(summary))
    for name in ARTIFACT_FILES:
        if (output_dir / name).is_file():
            artifact.add_file(str(output_dir / name), name=name)
    run.log_artifact(artifact)
    run.summary.update(dict(summary))
    return True
