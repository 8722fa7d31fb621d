"""The neural predictor (paper §3.2.1; AutoML for large capacity modeling, §3.1).

An ensemble of MLPs on `SearchSpace.encode(arch)`, each with two heads: the proxy NE and
log-FLOPs, both standardised over the training set (multi-task learning regularises the shared
trunk). The NE head trains on a pairwise ranking loss by default (O(N^2) labels from N scored
architectures; only the order matters for picking candidates), or on mean squared error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rankitect.space.arch import Arch
from rankitect.space.space import SearchSpace

LOSSES = ("pairwise", "mse")


def encode_values(space: SearchSpace, values: torch.Tensor) -> torch.Tensor:
    """`SearchSpace.encode` of every row of decision values ``(n, num_decisions)``: ``(n, E)``.

    Rows are first canonicalised through `decode`/`values` (inactive decisions to 0, all-off
    connections to the default input), then one-hot encoded in one vectorised step.
    """
    canon = torch.stack([space.values(space.decode(v)) for v in values])
    cards = torch.tensor([d.cardinality for d in space.decisions])
    offsets = torch.cumsum(cards, 0) - cards
    out = torch.zeros(len(canon), space.encoding_size)
    rows = torch.arange(len(canon)).unsqueeze(1).expand_as(canon)
    out[rows, offsets + canon] = space.active(canon).float()
    return out


def encode_archs(space: SearchSpace, archs: Sequence[Arch]) -> torch.Tensor:
    return torch.stack([space.encode(a) for a in archs])


def pairwise_loss(pred: torch.Tensor, target: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Logistic ranking loss over index pairs ``(P, 2)``: for each pair, the one with the lower
    target should get the lower prediction (``softplus(pred_lo - pred_hi)``)."""
    i, j = pairs[:, 0], pairs[:, 1]
    sign = torch.sign(target[j] - target[i])
    keep = sign != 0
    losses = nn.functional.softplus(sign[keep] * (pred[i] - pred[j])[keep])
    return losses.sum() / keep.sum().clamp_min(1)


class PredictorMLP(nn.Module):
    """Shared trunk, two heads: ``(n, E) -> (n, 2)`` = (standardised NE, standardised log-FLOPs)."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


class NeuralPredictor:
    """Ensemble of `PredictorMLP` trained on (architecture, proxy NE) pairs.

    Args:
        ensemble: number of MLPs (different initialisations and pair draws); predictions
            are their mean.
        hidden: hidden widths of each MLP.
        loss: ``pairwise`` (ranking) or ``mse`` for the NE head.
        epochs: full-batch Adam steps per MLP.
        max_pairs: pairs drawn per step for the pairwise loss (all N^2 when fewer).
        flops_weight: weight of the log-FLOPs head's MSE (0: single task).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        ensemble: int = 5,
        hidden: Sequence[int] = (64, 64),
        loss: str = "pairwise",
        epochs: int = 300,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        max_pairs: int = 16384,
        flops_weight: float = 0.5,
        seed: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"method.predictor.loss must be one of {LOSSES}, got {loss!r}")
        if ensemble < 1 or epochs < 1 or max_pairs < 1:
            raise ValueError("method.predictor.ensemble, epochs and max_pairs must be >= 1")
        self.space = space
        self.ensemble = int(ensemble)
        self.hidden = tuple(int(h) for h in hidden)
        self.loss = loss
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_pairs = int(max_pairs)
        self.flops_weight = float(flops_weight)
        self.seed = int(seed)
        self.models: list[PredictorMLP] = []

    def _log_flops(self, archs: Sequence[Arch]) -> torch.Tensor:
        return torch.tensor([math.log(max(self.space.flops(a), 1)) for a in archs])

    def fit(
        self,
        archs: Sequence[Arch],
        ne: Sequence[float],
        cost: Sequence[float] | None = None,
    ) -> NeuralPredictor:
        """Train every ensemble member from scratch on all ``(archs, ne)``. The second head
        learns log-FLOPs (`SearchSpace.flops`), or ``log(cost)`` when a positive ``cost`` per
        architecture is given (e.g. measured seconds per example)."""
        if len(archs) != len(ne) or len(archs) < 2:
            raise ValueError(f"need >= 2 scored architectures to fit, got {len(archs)}")
        x = encode_archs(self.space, archs)
        y = torch.tensor([float(v) for v in ne])
        if cost is None:
            f = self._log_flops(archs)
        else:
            if len(cost) != len(archs) or min(cost) <= 0:
                raise ValueError("predictor cost targets must be positive, one per architecture")
            f = torch.tensor([math.log(float(c)) for c in cost])
        self.ne_mean, self.ne_std = y.mean(), y.std().clamp_min(1e-8)
        self.f_mean, self.f_std = f.mean(), f.std().clamp_min(1e-8)
        y = (y - self.ne_mean) / self.ne_std
        f = (f - self.f_mean) / self.f_std
        n = len(y)
        all_pairs = torch.combinations(torch.arange(n), 2)
        self.models = []
        for m in range(self.ensemble):
            gen = torch.Generator().manual_seed(self.seed * 1000 + m)
            torch.manual_seed(self.seed * 1000 + m)
            model = PredictorMLP(x.shape[1], self.hidden)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.epochs):
                out = model(x)
                if self.loss == "mse":
                    loss = nn.functional.mse_loss(out[:, 0], y)
                else:
                    pairs = all_pairs
                    if len(pairs) > self.max_pairs:
                        pairs = torch.randint(n, (self.max_pairs, 2), generator=gen)
                    loss = pairwise_loss(out[:, 0], y, pairs)
                if self.flops_weight:
                    loss = loss + self.flops_weight * nn.functional.mse_loss(out[:, 1], f)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.models.append(model.eval())
        return self

    @torch.no_grad()
    def predict_encoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble-mean ``(ne_score, flops)`` for encodings ``(n, E)``. ``ne_score`` is in
        standardised units (lower is better; with the pairwise loss only its order means
        anything); ``flops`` is the second head mapped back to FLOPs (to the ``cost`` unit when
        `fit` was given one)."""
        if not self.models:
            raise RuntimeError("the predictor has not been fitted")
        out = torch.stack([m(x) for m in self.models]).mean(0)
        flops = torch.exp(out[:, 1] * self.f_std + self.f_mean)
        return out[:, 0], flops

    def predict(self, archs: Sequence[Arch]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict_encoded(encode_archs(self.space, archs))

    @torch.no_grad()
    def predict_standardised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble-mean ``(ne_score, cost_score)`` for encodings ``(n, E)``, both in the
        training set's standardised units (lower is better), ready to mix into a reward."""
        if not self.models:
            raise RuntimeError("the predictor has not been fitted")
        out = torch.stack([m(x) for m in self.models]).mean(0)
        return out[:, 0], out[:, 1]
