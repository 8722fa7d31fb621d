"""Progress of a fit: Lightning's bar on a terminal, log lines elsewhere
(``conf/callbacks/progress.yaml``)."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar

log = logging.getLogger("rankitect.train")


class LogProgress(Callback):
    """Progress as log lines, where a progress bar would be written to a file or a pipe (and
    become one endless line): every ``every_s`` seconds of training and after every
    validation, the epoch, the step (of the total when known) and the metrics the bar shows."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = float(every_s)
        self._last = 0.0

    def _log(self, trainer: L.Trainer, what: str) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.estimated_stepping_batches
        of = f"/{int(total)}" if total != float("inf") else ""
        metrics = ", ".join(
            f"{k}={float(v):.4g}" for k, v in sorted(trainer.progress_bar_metrics.items())
        )
        log.info(
            "%s: epoch %d, step %d%s%s",
            what,
            trainer.current_epoch,
            trainer.global_step,
            of,
            f": {metrics}" if metrics else "",
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._log(trainer, "training")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, "validated")


def progress_callback(every_s: float = 30.0, stream: IO[str] | None = None) -> Callback:
    """Hydra target of ``conf/callbacks/progress.yaml``: Lightning's bar when ``stream``
    (stderr) is a terminal, `LogProgress` lines every ``every_s`` seconds otherwise."""
    stream = sys.stderr if stream is None else stream
    return TQDMProgressBar() if stream.isatty() else LogProgress(every_s)


def with_progress(
    options: dict[str, Any], callbacks: list[Callback]
) -> tuple[dict[str, Any], list[Callback]]:
    """Trainer options and callbacks agreeing on the progress display: a config that turns
    the bar off (``trainer.enable_progress_bar=false``) drops the bar and the log lines too;
    `LogProgress` without a bar callback turns Lightning's default bar off."""
    shows = (ProgressBar, LogProgress)
    if not options.get("enable_progress_bar", True):
        return options, [c for c in callbacks if not isinstance(c, shows)]
    logs = any(isinstance(c, LogProgress) for c in callbacks)
    if logs and not any(isinstance(c, ProgressBar) for c in callbacks):
        return {**options, "enable_progress_bar": False}, callbacks
    return options, callbacks
