"""`RLSearchCallback`: the in-place RL agent of the one-shot search (paper §3.2.2, Figure 2).

One training step of a `SupernetModule`, as seen from here:

1. ``on_train_batch_start``: sample this rank's subnet ``a`` from the policy (during the
   warm-up: the whole supernet, or a draw from the space's prior) and hand it to the module;
2. the module trains ``a`` and the baseline model on the batch and returns both batch NEs;
3. ``on_train_batch_end``: reward ``R = NE%(a) + alpha * Cost(a)``; the ``(a, R)`` of every
   DDP rank are all-gathered, so each rank holds the same pending samples; once there are
   ``samples_per_update`` of them, every rank runs the same on-policy update followed by K
   off-policy updates (`PolicyLearner`) and so keeps the same policy.

The subnet of a step is drawn from a generator derived from ``(seed, rank, batch count)``:
ranks sample different subnets, and a resumed run samples what the uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rankitect.nonfinite import NonFiniteGuard
from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import (
    COST_KINDS,
    REWARD_KINDS,
    PolicyLearner,
    search_reward,
    seeded_generator,
)
from rankitect.space.space import SearchSpace

WARMUP_MODES = ("supernet", "uniform")
POLICY_INITS = ("prior", "uniform")
# Columns of the per-sample statistics gathered alongside the decision values.
STATS = ("reward", "ne", "ne_pct", "flops")
# Stream ids mixed into the sampling seeds, so warm-up and policy draws never coincide.
_POLICY_STREAM, _WARMUP_STREAM = 1, 2
# A sample's reward: usable; undefined (a batch of one class has no NE); or non-finite although
# defined, a fault that `NonFiniteGuard` counts.
_REWARD_OK, _REWARD_UNDEFINED, _REWARD_NONFINITE = 0.0, 1.0, 2.0


def _check_warmup(warmup_steps: int | float) -> None:
    is_fraction = isinstance(warmup_steps, float) and 0.0 <= warmup_steps <= 1.0
    is_count = isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool)
    if not (is_fraction or (is_count and warmup_steps >= 0)):
        raise ValueError(
            "warmup_steps must be a step count (int >= 0) or a fraction of the training steps "
            f"(float in [0, 1]), got {warmup_steps!r}"
        )


class RLSearchCallback(Callback):
    """REINFORCE with an in-place baseline, on/off-policy updates and a FLOPs cost.

    Args:
        space: the search space of the `SupernetModule` being trained.
        target_flops: ``c`` of the FLOPs cost; ``None`` takes the seed architecture's FLOPs.
        alpha: weight of the FLOPs cost in the reward (0 searches for NE only).
        cost: ``l1`` (``|F - c| / c``), ``relu`` (``max(F - c, 0) / c``) or ``linear`` (``F / c``).
        reward: ``relative`` (``NE%`` against the baseline model, Eq. 4) or ``absolute``
            (the plain batch NE).
        policy_init: ``prior`` (the space's sampling distribution) or ``uniform``.
        policy_optimizer, policy_lr: the policy's optimiser (``adam`` | ``sgd`` | ``rmsprop``).
        samples_per_update: (arch, reward) pairs per policy update, summed over DDP ranks.
        off_policy_updates: K, replayed updates after each on-policy one (0: REINFORCE only).
        replay_capacity: size of the experience-replay buffer.
        is_clip: clip of the importance weights (Eq. 6).
        warmup_steps: training steps with a frozen policy, or a fraction of all of them.
        warmup_mode: during the warm-up train the whole ``supernet`` or ``uniform`` draws
            from the space's prior.
        seed: seed of subnet sampling and replay.
        max_nonfinite_in_a_row: a non-finite reward (of a batch holding both classes) never
            reaches the policy or the replay buffer; it is counted (``rl/nonfinite_skipped``)
            and this many steps in a row with one stop the fit.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        target_flops: float | None = None,
        alpha: float = 0.0,
        cost: str = "l1",
        reward: str = "relative",
        policy_init: str = "prior",
        policy_optimizer: str = "adam",
        policy_lr: float = 0.01,
        samples_per_update: int = 8,
        off_policy_updates: int = 4,
        replay_capacity: int = 1024,
        is_clip: float = 1e4,
        warmup_steps: int | float = 0.25,
        warmup_mode: str = "uniform",
        seed: int = 0,
        max_nonfinite_in_a_row: int = 10,
    ) -> None:
        super().__init__()
        if cost not in COST_KINDS:
            raise ValueError(f"cost must be one of {COST_KINDS}, got {cost!r}")
        if reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {REWARD_KINDS}, got {reward!r}")
        if policy_init not in POLICY_INITS:
            raise ValueError(f"policy_init must be one of {POLICY_INITS}, got {policy_init!r}")
        if warmup_mode not in WARMUP_MODES:
            raise ValueError(f"warmup_mode must be one of {WARMUP_MODES}, got {warmup_mode!r}")
        if not alpha >= 0:  # NaN too
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if samples_per_update < 2:
            # the mean-reward baseline of a single sample leaves no learning signal
            raise ValueError(f"samples_per_update must be >= 2, got {samples_per_update}")
        _check_warmup(warmup_steps)
        self.space = space
        self.target_flops = self._resolve_target(space, target_flops, alpha)
        self.alpha, self.cost, self.reward = float(alpha), cost, reward
        self.samples_per_update = int(samples_per_update)
        self.warmup_steps, self.warmup_mode = warmup_steps, warmup_mode
        self.seed = int(seed)
        # float64: the advantages of a shared decision then cancel to ~1e-16, below Adam's eps;
        # in float32 the ~1e-7 residue is what Adam would normalise into full steps.
        self.policy = CategoricalPolicy(space, init=policy_init).double()
        self.learner = PolicyLearner(
            self.policy,
            optimizer=policy_optimizer,
            lr=policy_lr,
            off_policy_updates=off_policy_updates,
            replay_capacity=replay_capacity,
            is_clip=is_clip,
            seed=seed,
        )
        self.batches = 0  # training batches completed, the clock of the sampling seeds
        self.pending = torch.zeros(0, space.num_decisions + len(STATS), dtype=torch.float64)
        self.curves: dict[str, list[tuple[int, float]]] = {
            k: [] for k in ("reward", "ne", "ne_pct", "flops", "entropy", "most_likely_flops")
        }
        # this rank's decisions for the current step, and whether the policy drew them
        self._values: torch.Tensor | None = None
        self._on_policy = False
        self._warmup_until: int | None = None  # the warm-up's end step, fixed at the first start
        self.nonfinite = NonFiniteGuard(max_nonfinite_in_a_row, "reward")

    @staticmethod
    def _resolve_target(space: SearchSpace, target: float | None, alpha: float) -> float | None:
        if target is None:
            if alpha == 0:
                return None
            try:
                return float(space.flops(space.seed_arch()))
            except ValueError:
                raise ValueError(
                    f"target_flops: null means the seed architecture's FLOPs, but space "
                    f"{space.name!r} has no seed; give a number"
                ) from None
        if not 0 < target < math.inf:
            raise ValueError(f"target_flops must be finite and > 0, got {target}")
        return float(target)

    # ---- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "space", None) is not self.space:
            raise ValueError("RLSearchCallback needs a SupernetModule built on the same space")
        if self.reward == "relative" and pl_module.baseline is None:
            raise ValueError("reward: 'relative' needs a baseline model; set baseline")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._warmup_until is not None:  # resolved by the run this one resumes
            return
        w = self.warmup_steps
        if isinstance(w, float):
            w = round(w * trainer.estimated_stepping_batches)
        self._warmup_until = int(w)

    def in_warmup(self, trainer: L.Trainer) -> bool:
        return trainer.global_step < self._warmup_until

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        rank = trainer.global_rank
        self._on_policy = not self.in_warmup(trainer)
        if self._on_policy:
            gen = seeded_generator(self.seed, _POLICY_STREAM, rank, self.batches)
            self._values = self.policy.sample(1, gen)[0]
        elif self.warmup_mode == "uniform":
            gen = seeded_generator(self.seed, _WARMUP_STREAM, rank, self.batches)
            self._values = self.space.sample_values(gen)
        else:
            self._values = None
        pl_module.arch = None if self._values is None else self.space.decode(self._values)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.batches += 1
        if not self._on_policy:
            return
        row = self._sample_row(pl_module, outputs)
        row = torch.cat([row, self._reward_status(row, batch)], dim=1)
        gathered = pl_module.all_gather(row.to(pl_module.device)).reshape(-1, row.shape[-1]).cpu()
        gathered, status = gathered[:, :-1], gathered[:, -1]
        # Every rank holds the same rows, so every rank reaches the same verdict.
        self.nonfinite.observe(not bool((status == _REWARD_NONFINITE).any()), trainer.global_step)
        pl_module.log("rl/nonfinite_skipped", float(self.nonfinite.skipped))
        gathered = gathered[status == _REWARD_OK]
        self.pending = torch.cat([self.pending, gathered])
        if len(gathered):
            stats = gathered[:, -len(STATS) :].nanmean(0)
            pl_module.log("rl/reward", stats[0], prog_bar=True)
            pl_module.log("rl/flops", stats[3])
            if self.reward == "relative":
                pl_module.log("rl/ne_pct", stats[2])
        if len(self.pending) >= self.samples_per_update:
            self._update(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.eval_arch = self.policy.most_likely()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.search_record = self.record(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        pl_module.search_record = self.record(trainer)

    # ---- the search ----------------------------------------------------------------------------

    def _sample_row(self, pl_module: L.LightningModule, outputs: Any) -> torch.Tensor:
        """``(1, num_decisions + len(STATS))`` float64: this rank's decisions and statistics."""
        values = self._values
        flops = torch.tensor(self.space.flops(self.space.decode(values)), dtype=torch.float64)
        ne = outputs["ne_arch"].detach().double().cpu()
        base = outputs.get("ne_baseline")
        base = None if base is None else base.detach().double().cpu()
        reward = search_reward(
            ne,
            base,
            flops,
            kind=self.reward,
            alpha=self.alpha,
            target=self.target_flops,
            cost=self.cost,
        )
        ne_pct = (ne - base) / base if base is not None else torch.tensor(float("nan"))
        stats = torch.stack([reward, ne, ne_pct.double(), flops])
        return torch.cat([values.double(), stats]).unsqueeze(0)

    def _reward_status(self, row: torch.Tensor, batch: Any) -> torch.Tensor:
        """``(1, 1)``: whether the reward in ``row`` is usable, undefined or a fault."""
        reward = row[0, -len(STATS)]
        if torch.isfinite(reward):
            return torch.full((1, 1), _REWARD_OK, dtype=row.dtype)
        label = batch[2]
        one_class = bool(label.min() == label.max())
        status = _REWARD_UNDEFINED if one_class else _REWARD_NONFINITE
        return torch.full((1, 1), status, dtype=row.dtype)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self.pending = self.pending, self.pending[:0]
        values = batch[:, : self.space.num_decisions].long()
        stats = batch[:, self.space.num_decisions :]
        self.learner.update(values, stats[:, 0])
        with torch.no_grad():
            entropy = float(self.policy.entropy(values).mean())
        ml_flops = float(self.space.flops(self.policy.most_likely()))
        step = trainer.global_step
        for name, value in zip(STATS, stats.nanmean(0).tolist(), strict=True):
            if value == value:  # not nan (ne_pct without a baseline)
                self.curves[name].append((step, value))
        self.curves["entropy"].append((step, entropy))
        self.curves["most_likely_flops"].append((step, ml_flops))
        pl_module.log("rl/entropy", entropy)
        pl_module.log("rl/most_likely_flops", ml_flops, prog_bar=True)

    def record(self, trainer: L.Trainer) -> dict[str, Any]:
        """What the search hands back: final policy logits, curves, counters, and the last
        validation NEs (of the most likely subnet on the shared weights, and the baseline)."""
        return {
            "logits": self.policy.logits.detach().cpu().clone(),
            "curves": {k: list(v) for k, v in self.curves.items()},
            "updates": self.learner.updates,
            "target_flops": self.target_flops,
            "warmup_steps": self._warmup_until,
            "val": {
                k.split("/", 1)[1]: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("val/")
            },
        }

    # ---- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "batches": self.batches,
            "warmup_until": self._warmup_until,
            "pending": self.pending.clone(),
            "curves": {k: list(v) for k, v in self.curves.items()},
            "nonfinite": self.nonfinite.state_dict(),
            # Lightning does not restore the global RNG; it draws e.g. the baseline's dropout.
            "torch_rng_state": torch.get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.learner.load_state_dict(state_dict["learner"])
        self.batches = int(state_dict["batches"])
        self._warmup_until = state_dict["warmup_until"]
        self.pending = state_dict["pending"].clone()
        self.curves = {k: [tuple(p) for p in v] for k, v in state_dict["curves"].items()}
        self.nonfinite.load_state_dict(state_dict.get("nonfinite"))
        torch.set_rng_state(state_dict["torch_rng_state"])
