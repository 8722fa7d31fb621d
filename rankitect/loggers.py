"""Experiment loggers of ``conf/logger/`` where Lightning's own need a fix."""

from __future__ import annotations

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
