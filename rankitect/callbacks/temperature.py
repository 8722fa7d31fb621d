"""`GumbelTemperature`: anneals the Gumbel-softmax temperature of a DNAS search.

A high temperature gives smooth, low-variance relaxed samples while the supernet's weights
are still poor; annealing towards a low one makes the samples nearly one-hot, so the weights
and architecture parameters are trained on (almost) the discrete architectures the search
will export.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

SCHEDULES = ("exponential", "linear")


class GumbelTemperature(Callback):
    """Sets ``pl_module.temperature`` (and ``pl_module.theta_frozen``) before every step.

    Steps ``t < warmup_steps`` keep ``start``; then over ``anneal_steps`` steps the temperature
    moves from ``start`` to ``end`` and stays at ``end`` afterwards, with ``s = min((t -
    warmup_steps) / anneal_steps, 1)``:

    - ``exponential``: ``start * (end / start) ** s`` (a constant decay factor per step);
    - ``linear``: ``start + (end - start) * s``.

    Step counts given as ``None`` or a fraction are resolved from the trainer's step budget at
    the start of the first fit and kept in the checkpoint, so a resumed run follows the
    original schedule even if its budget changed.

    Args:
        schedule: ``exponential`` or ``linear``.
        start: temperature during warm-up and at the start of annealing (> 0).
        end: temperature reached after ``anneal_steps`` (> 0).
        anneal_steps: length of the annealing; ``None`` anneals over the rest of the fit, so
            that the last step runs at ``end``.
        warmup_steps: steps at ``start`` before annealing begins: a count (int), or a fraction
            of the fit's steps (float in [0, 1]).
        freeze_theta_during_warmup: also keep the architecture parameters fixed during the
            warm-up, so the shared weights are trained on the initial distribution first.
    """

    def __init__(
        self,
        schedule: str = "exponential",
        start: float = 5.0,
        end: float = 0.1,
        anneal_steps: int | None = None,
        warmup_steps: int | float = 0,
        freeze_theta_during_warmup: bool = True,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"temperature.schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not 0 < start < math.inf:
            raise ValueError(f"temperature.start must be finite and > 0, got {start}")
        if not 0 < end < math.inf:
            raise ValueError(f"temperature.end must be finite and > 0, got {end}")
        if anneal_steps is not None and anneal_steps < 1:
            raise ValueError(f"temperature.anneal_steps must be >= 1 or null, got {anneal_steps}")
        is_fraction = isinstance(warmup_steps, float) and 0.0 <= warmup_steps <= 1.0
        is_count = isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool)
        if not (is_fraction or (is_count and warmup_steps >= 0)):
            raise ValueError(
                "temperature.warmup_steps must be a step count (int >= 0) or a fraction of the "
                f"training steps (float in [0, 1]), got {warmup_steps!r}"
            )
        self.schedule = schedule
        self.start = float(start)
        self.end = float(end)
        self.anneal_steps = None if anneal_steps is None else int(anneal_steps)
        self.warmup_steps = warmup_steps
        self.freeze_theta_during_warmup = bool(freeze_theta_during_warmup)
        self.current = self.start

    def temperature(self, step: int) -> float:
        """The temperature of training step ``step`` (0-based)."""
        if self.anneal_steps is None or isinstance(self.warmup_steps, float):
            raise ValueError(
                "the temperature schedule is resolved at the start of the fit "
                "(temperature.anneal_steps is null or temperature.warmup_steps a fraction)"
            )
        s = min(max(step - self.warmup_steps, 0) / self.anneal_steps, 1.0)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * s
        return self.start * math.exp(s * math.log(self.end / self.start))

    def in_warmup(self, step: int) -> bool:
        return step < self.warmup_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Callback state is restored before on_fit_start: a resumed run keeps its resolution.
        if self.anneal_steps is not None and not isinstance(self.warmup_steps, float):
            return
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "temperature.anneal_steps null or temperature.warmup_steps a fraction needs a "
                "finite step budget (set trainer.max_steps or trainer.max_epochs)"
            )
        if isinstance(self.warmup_steps, float):
            self.warmup_steps = round(self.warmup_steps * total)
        if self.anneal_steps is None:
            # steps warmup .. total - 1 anneal, the last one at s = 1
            self.anneal_steps = max(int(total) - self.warmup_steps - 1, 1)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self.current = self.temperature(step)
        pl_module.temperature = self.current
        pl_module.theta_frozen = self.freeze_theta_during_warmup and self.in_warmup(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "anneal_steps": self.anneal_steps,
            "warmup_steps": self.warmup_steps,
            "current": self.current,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anneal_steps = state_dict["anneal_steps"]
        self.warmup_steps = state_dict["warmup_steps"]
        self.current = float(state_dict["current"])
