"""Non-finite losses and rewards: skip the update, count it, stop after too many in a row.

A NaN or infinite loss would turn every weight it reaches into NaN at the next optimiser step,
and a NaN reward would do the same to the policy logits. The training modules and the RL
callback therefore check each step's loss (reward) with a `NonFiniteGuard`: a non-finite one is
skipped (no optimiser step; no policy update from that sample), counted and warned about, and
after ``max_nonfinite_in_a_row`` consecutive non-finite steps the run stops with a
`NonFiniteError` naming that config key.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

KEY = "max_nonfinite_in_a_row"


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or rewards: the run cannot make progress."""


def check_limit(max_in_a_row: int) -> int:
    if isinstance(max_in_a_row, bool) or not isinstance(max_in_a_row, int) or max_in_a_row < 1:
        raise ValueError(f"{KEY} must be an int >= 1, got {max_in_a_row!r}")
    return max_in_a_row


def is_finite(value: torch.Tensor | float) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


class NonFiniteGuard:
    """Counts skipped non-finite steps of one quantity (``what``: e.g. ``"training loss"``).

    `observe` takes each step's verdict; ``skipped`` is the total, ``in_a_row`` the current run
    of consecutive non-finite steps. Its state goes into checkpoints (`state_dict`), so a resumed
    run keeps counting where the killed one stopped.
    """

    def __init__(self, max_in_a_row: int, what: str) -> None:
        self.max_in_a_row = check_limit(max_in_a_row)
        self.what = what
        self.skipped = 0
        self.in_a_row = 0

    def observe(self, finite: bool, step: int) -> bool:
        """Record step ``step``'s verdict; returns ``finite``. Raises `NonFiniteError` at the
        ``max_in_a_row``-th non-finite step in a row."""
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"non-finite {self.what} on {self.in_a_row} steps in a row (the last at step "
                f"{step}, {self.skipped} skipped in all): stopping, as {KEY}={self.max_in_a_row}. "
                "Look for NaN/inf in the data or diverging weights (lower the learning rate), or "
                f"raise {KEY}"
            )
        log.warning(
            "non-finite %s at step %d: skipped (%d in a row, %d in all; the run stops at %s=%d)",
            self.what,
            step,
            self.in_a_row,
            self.skipped,
            KEY,
            self.max_in_a_row,
        )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        # None: a checkpoint from before the guard existed
        state = state or {}
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))


class SkipsNonFiniteSteps:
    """LightningModule mixin: a step whose loss is non-finite on any rank updates nothing.

    ``training_step`` calls `finite_step` on its loss and, whatever the verdict, lets the
    backward run (DDP's gradient reduction must complete on every rank); `on_before_optimizer_step`
    then drops the gradients of a non-finite step, so the optimiser, which skips parameters
    without a gradient, leaves every weight and its state (Adam's moments and step count) as
    they were. The step still counts in ``trainer.global_step``. Mix in before
    ``LightningModule``, and call `init_nonfinite` in ``__init__``.
    """

    def init_nonfinite(self, max_in_a_row: int, what: str = "training loss") -> None:
        self.nonfinite = NonFiniteGuard(max_in_a_row, what)
        self._drop_update = False

    def finite_step(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank; counts, warns, logs
        ``train/nonfinite_skipped`` and raises `NonFiniteError` past the limit."""
        finite = is_finite(loss.detach())
        if self._trainer is not None:  # one verdict for all ranks, so all skip together
            finite = self._trainer.strategy.reduce_boolean_decision(finite, all=True)
        ok = self.nonfinite.observe(finite, self.global_step)
        # sticky until the optimiser step: with gradient accumulation one bad micro-batch
        # spoils the accumulated gradient
        self._drop_update = self._drop_update or not ok
        self.log("train/nonfinite_skipped", float(self.nonfinite.skipped))
        return ok

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.load_state_dict(checkpoint.get("nonfinite"))
