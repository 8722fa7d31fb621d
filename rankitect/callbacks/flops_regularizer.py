"""`FlopsRegularizer`: the FLOPs term of the DNAS objective (paper Eq. 9).

``R = lambda * E_a[|FLOPs(a) - c|] / c``, added to the cross-entropy so that the minimiser
of the regularised objective satisfies the constraint ``FLOPs(gamma(theta)) <= c`` (Eq. 8).

The callback registers itself with the module at the start of the fit; the module then asks
it for its loss term on every architecture step (see `DNASModule.add_regulariser`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rankitect.search.reinforce import COST_KINDS, flops_cost

if TYPE_CHECKING:
    from rankitect.lit.dnas_module import DNASModule, Relaxation

ESTIMATORS = ("sampled", "expected")


class FlopsRegularizer(Callback):
    """``weight * cost(FLOPs, target_flops)`` with ``cost`` the target-normalised L1 (Eq. 9)
    or ReLU penalty of `rankitect.search.reinforce.flops_cost`.

    Args:
        target_flops: ``c``, per-example FLOPs of the wanted model; ``None`` takes the FLOPs of
            the space's seed architecture (resolved when the fit starts).
        weight: ``lambda``.
        estimator: ``sampled`` is Eq. 9's Monte-Carlo estimate over the step's realisations:
            the space's expected FLOPs evaluated at each relaxed sample, which is the exact
            FLOPs of the sampled architecture for one-hot (straight-through) samples and a
            smooth surrogate of it for soft ones, differentiable through the relaxation.
            ``expected`` penalises ``|E_theta[FLOPs] - c|`` instead, computed from the
            decision probabilities: deterministic, but it lets a wide spread of architectures
            around the target go unpenalised.
        kind: ``l1`` (``|F - c| / c``), ``relu`` (``max(F - c, 0) / c``) or ``linear`` (``F / c``).
        max_realisations: with per-example sampling, use at most this many of the step's
            realisations (the first ones of the batch) for the estimate.
    """

    name = "flops"

    def __init__(
        self,
        target_flops: float | None = None,
        weight: float = 1.0,
        estimator: str = "sampled",
        kind: str = "l1",
        max_realisations: int = 16,
    ) -> None:
        if target_flops is not None and not 0 < target_flops < math.inf:
            raise ValueError(f"target_flops must be finite and > 0, or null, got {target_flops}")
        if not weight >= 0:  # NaN too
            raise ValueError(f"alpha (the FLOPs regulariser's weight) must be >= 0, got {weight}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"flops_estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if kind not in COST_KINDS:
            raise ValueError(f"cost must be one of {COST_KINDS}, got {kind!r}")
        if max_realisations < 1:
            raise ValueError(f"flops_max_realisations must be >= 1, got {max_realisations}")
        self.target_flops = None if target_flops is None else float(target_flops)
        self.weight = float(weight)
        self.estimator = estimator
        self.kind = kind
        self.max_realisations = int(max_realisations)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "add_regulariser"):
            raise ValueError(
                f"FlopsRegularizer needs a module with add_regulariser (DNASModule), got "
                f"{type(pl_module).__name__}"
            )
        if self.target_flops is None:
            space = pl_module.space
            try:
                self.target_flops = float(space.flops(space.seed_arch()))
            except ValueError:
                raise ValueError(
                    f"target_flops: null means the seed architecture's FLOPs, but space "
                    f"{space.name!r} has no seed; give a number"
                ) from None
        pl_module.add_regulariser(self)

    def flops(self, module: DNASModule, relaxation: Relaxation) -> torch.Tensor:
        """FLOPs the penalty is taken of: ``(n,)`` per realisation, or ``(1,)`` expected."""
        space = module.space
        if self.estimator == "expected":
            return space.expected_flops(relaxation.probs).unsqueeze(0)
        samples = [w[: self.max_realisations] for w in relaxation.samples]
        return torch.func.vmap(space.expected_flops)(samples)

    def loss(self, module: DNASModule, relaxation: Relaxation) -> torch.Tensor:
        cost = flops_cost(self.flops(module, relaxation), self.target_flops, self.kind)
        return self.weight * cost.mean().to(relaxation.probs[0].dtype)
