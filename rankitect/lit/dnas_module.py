"""`DNASModule`: differentiable architecture search over a supernet (paper §3.2.3, Eq. 8).

One logit vector ``theta`` per search-space decision (the layout of the RL policy,
`CategoricalPolicy`). Each training step relaxes every decision with Gumbel-softmax, runs
the supernet under the relaxed masks, and minimises ``CE + regularisers`` in the supernet's
weights ``W`` and in ``theta``, each with its own optimiser. The exported architecture is the
most likely one, ``gamma(theta)``.

Steps and data flow::

    batch -> Gumbel-softmax samples of theta (per batch or per example; seeded by step)
          -> supernet(dense, sparse, soft=samples) -> BCE
          -> + registered regulariser terms (e.g. `FlopsRegularizer`) on architecture steps
          -> backward -> W step and/or theta step (``update``: joint | alternate)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F

from rankitect.metrics import NormalizedEntropy
from rankitect.nonfinite import SkipsNonFiniteSteps
from rankitect.search.checkpointing import checkpoint_choices
from rankitect.search.gumbel import gumbel_softmax, split_decisions
from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import seeded_generator
from rankitect.space import Arch, SearchSpace, build_supernet

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

UPDATES = ("joint", "alternate")
SAMPLINGS = ("batch", "example")
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
CURVES = (
    "temperature",
    "train_loss",
    "train_ne",
    "expected_flops",
    "most_likely_flops",
    "entropy",
    "val_ne",
)


@dataclass
class Relaxation:
    """One step's relaxed architecture.

    ``samples``: per decision ``(b, cardinality)`` Gumbel-softmax samples, ``b = 1`` (one
    realisation for the batch) or ``B`` (one per example); ``probs``: per decision
    ``softmax(theta)`` ``(cardinality,)``. Both are differentiable in ``theta``.
    """

    samples: list[torch.Tensor]
    probs: list[torch.Tensor]


class Regulariser(Protocol):
    """A loss term on the architecture, asked for on every architecture step."""

    name: str

    def loss(self, module: DNASModule, relaxation: Relaxation) -> torch.Tensor: ...


def _window_ne(loss_sum: float, positives: float, count: float) -> float:
    """NE of a window from its sums: mean log loss over the entropy of the mean label."""
    rate = positives / count
    if not 0.0 < rate < 1.0:
        return float("nan")
    return loss_sum / count / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


class DNASModule(SkipsNonFiniteSteps, L.LightningModule):
    """Supernet weights ``W`` and architecture logits ``theta`` trained by Gumbel-softmax DNAS.

    Args:
        space: the search space; ``theta`` has one logit vector per decision.
        lr: learning rate of ``W``.
        arch_lr: learning rate of ``theta``.
        optimizer: ``adam`` or ``sgd``, for ``W``.
        arch_optimizer: ``adam`` or ``sgd``, for ``theta``.
        update: ``joint`` steps ``W`` and ``theta`` on every batch from the same loss;
            ``alternate`` steps ``W`` for ``alternate_every`` batches, then ``theta`` for
            ``alternate_every`` batches, and so on (steps where ``theta`` is frozen train ``W``).
        alternate_every: batches per phase of ``alternate``.
        sampling: ``batch`` draws one realisation per batch; ``example`` one per example (the
            paper's per-minibatch-element realisations). Under DDP every rank draws its own.
        hard: straight-through Gumbel-softmax (one-hot masks forward, soft gradients).
        init: ``prior`` starts ``theta`` at the space's sampling distribution, ``uniform`` at
            equal probabilities.
        temperature: Gumbel-softmax temperature when no `GumbelTemperature` callback sets it.
        seed: seed of the Gumbel noise (combined with the rank and the step).
        activation_checkpointing: keep only the Choices' outputs of the soft forward and
            recompute each Choice's activations in the backward (`checkpoint_choices`).
        curve_every_n_steps: steps between points of the search curves (``curves``).
        max_nonfinite_in_a_row: a step whose loss is non-finite steps neither ``W`` nor
            ``theta`` (`SkipsNonFiniteSteps`); this many in a row stop the fit.
    """

    def __init__(
        self,
        space: SearchSpace,
        lr: float = 1e-3,
        arch_lr: float = 1e-2,
        optimizer: str = "adam",
        arch_optimizer: str = "adam",
        update: str = "joint",
        alternate_every: int = 1,
        sampling: str = "batch",
        hard: bool = False,
        init: str = "prior",
        temperature: float = 1.0,
        seed: int = 0,
        activation_checkpointing: bool = False,
        curve_every_n_steps: int = 10,
        max_nonfinite_in_a_row: int = 10,
    ) -> None:
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if alternate_every < 1:
            raise ValueError(f"alternate_every must be >= 1, got {alternate_every}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        for key, value in (("optimizer", optimizer), ("arch_optimizer", arch_optimizer)):
            if value not in OPTIMIZERS:
                raise ValueError(f"{key} must be one of {sorted(OPTIMIZERS)}, got {value!r}")
        for key, value in (("lr", lr), ("arch_lr", arch_lr), ("temperature", temperature)):
            if not 0 < value < math.inf:
                raise ValueError(f"{key} must be finite and > 0, got {value}")
        if curve_every_n_steps < 1:
            raise ValueError(f"curve_every_n_steps must be >= 1, got {curve_every_n_steps}")
        # The space is rebuilt from config, not pickled into the checkpoint's hyper-parameters.
        self.save_hyperparameters(ignore=["space"])
        self.automatic_optimization = False
        self.space = space
        self.supernet = build_supernet(space)
        self.arch = CategoricalPolicy(space, init=init)
        self.cardinalities = [d.cardinality for d in space.decisions]
        self.temperature = float(temperature)
        self.theta_frozen = False
        self.seed = int(seed)
        self.regularisers: list[Regulariser] = []
        self.curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES}
        # (sum of BCE, sum of labels, examples) since the last curve point
        self._window = [0.0, 0.0, 0.0]
        self._val_arch: Arch | None = None
        self.val_ne = NormalizedEntropy()
        self.init_nonfinite(max_nonfinite_in_a_row)

    # ---- architecture ------------------------------------------------------------------------

    def add_regulariser(self, regulariser: Regulariser) -> None:
        """Register a loss term (idempotent: a second fit does not add it twice)."""
        if regulariser not in self.regularisers:
            self.regularisers.append(regulariser)

    def relax(self, step: int, batch_size: int) -> Relaxation:
        """Gumbel-softmax samples of every decision for training step ``step``."""
        generator = seeded_generator(self.seed, self.global_rank, step)
        n = batch_size if self.hparams.sampling == "example" else 1
        samples = gumbel_softmax(
            self.arch.logits, self.arch.valid, self.temperature, generator, n, self.hparams.hard
        )
        return Relaxation(split_decisions(samples, self.cardinalities), self.arch.probs())

    def most_likely(self) -> Arch:
        """``gamma(theta)``: every decision at its most likely value."""
        return self.arch.most_likely()

    def is_arch_step(self, step: int) -> bool:
        if self.theta_frozen:
            return False
        # hparams["update"], not hparams.update: hparams is a dict, so the attribute is dict.update
        if self.hparams["update"] == "joint":
            return True
        return (step // self.hparams.alternate_every) % 2 == 1

    @torch.no_grad()
    def expected_flops(self) -> float:
        return float(self.space.expected_flops(self.arch.probs()))

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits of the most likely architecture (hard masks)."""
        return self.supernet(dense, sparse, arch=self.most_likely())

    def soft_forward(
        self, dense: torch.Tensor, sparse: torch.Tensor, samples: list[torch.Tensor]
    ) -> torch.Tensor:
        """``(B,)`` logits of the supernet under the relaxed masks ``samples``.

        With ``activation_checkpointing`` each Choice is a checkpointed region: its
        activations are dropped after the forward and recomputed in the backward.
        """
        if not self.hparams.activation_checkpointing:
            return self.supernet(dense, sparse, soft=samples)
        with checkpoint_choices(self.supernet):
            return self.supernet(dense, sparse, soft=samples)

    # ---- training ----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.trainer.precision == "16-mixed":
            raise ValueError(
                "trainer.precision=16-mixed is not supported by DNAS: its manual optimisation "
                "steps the architecture optimiser outside the gradient scaler; use bf16-mixed "
                "or 32-true"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        dense, sparse, label = batch
        step = self.global_step
        arch_step = self.is_arch_step(step)
        relaxation = self.relax(step, label.shape[0])
        logits = self.soft_forward(dense, sparse, relaxation.samples)
        bce = F.binary_cross_entropy_with_logits(logits, label)
        loss = bce
        if hasattr(self.supernet, "regularization_loss"):  # the space's embedding L2
            loss = loss + self.supernet.regularization_loss()
        if arch_step:
            for reg in self.regularisers:
                term = reg.loss(self, relaxation)
                self.log(f"train/reg_{reg.name}", term)
                loss = loss + term
        opt_w, opt_theta = self.optimizers()
        opt_w.zero_grad()
        opt_theta.zero_grad()
        finite = self.finite_step(loss)
        # Both W and theta always get gradients, so DDP reduces the same parameters each step.
        self.manual_backward(loss)
        # Exactly one Lightning-wrapped step per batch, so trainer.global_step counts batches
        # (max_steps, checkpoint intervals and the schedules all mean batches). After a
        # non-finite loss the wrapped step finds its gradients dropped (on_before_optimizer_step)
        # and the unwrapped theta step is not taken.
        if self.hparams["update"] == "joint":
            opt_w.step()
            if arch_step and finite:
                opt_theta.optimizer.step()
        else:
            (opt_theta if arch_step else opt_w).step()
        self.log("train/temperature", self.temperature)
        if finite:
            self.log("train/loss", bce, prog_bar=True)
            self._track(step, bce.detach(), label)
        return loss.detach()

    def _track(self, step: int, bce: torch.Tensor, label: torch.Tensor) -> None:
        n = label.shape[0]
        self._window[0] += float(bce) * n
        self._window[1] += float(label.sum())
        self._window[2] += n
        done = step + 1
        if done % self.hparams.curve_every_n_steps:
            return
        loss_sum, positives, count = self._window
        values = {
            "temperature": self.temperature,
            "train_loss": loss_sum / count,
            "train_ne": _window_ne(loss_sum, positives, count),
            "expected_flops": self.expected_flops(),
            "most_likely_flops": float(self.space.flops(self.most_likely())),
            "entropy": float(self.arch.entropy().detach()),
        }
        for name, value in values.items():
            self.curves[name].append((done, float(value)))
        self.log_dict({f"search/{k}": float(v) for k, v in values.items()})
        self._window = [0.0, 0.0, 0.0]

    # ---- validation: the most likely architecture, with hard masks ---------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_arch = self.most_likely()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        dense, sparse, label = batch
        logits = self.supernet(dense, sparse, arch=self._val_arch)
        self.val_ne.update(torch.sigmoid(logits), label)

    def on_validation_epoch_end(self) -> None:
        ne = self.val_ne.compute()
        self.val_ne.reset()
        self.log("val/ne", ne, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.curves["val_ne"].append((self.global_step, float(ne)))

    # ---- optimisers and checkpoints ----------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        weights = OPTIMIZERS[hp.optimizer](self.supernet.parameters(), lr=hp.lr)
        theta = OPTIMIZERS[hp.arch_optimizer]([self.arch.logits], lr=hp.arch_lr)
        return [weights, theta]

    # The search state rides in the state dict: it is in every checkpoint, and under ddp_spawn
    # it reaches the main process with the weights (plain attributes would not).
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "temperature": self.temperature,
            "curves": {k: list(v) for k, v in self.curves.items()},
            "window": list(self._window),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # The noise of step t is a function of (seed, rank, t): keep the original seed.
        self.seed = int(state["seed"])
        self.temperature = float(state["temperature"])
        self.curves = {k: [tuple(p) for p in v] for k, v in state["curves"].items()}
        self._window = list(state["window"])
