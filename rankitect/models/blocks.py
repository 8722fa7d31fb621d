"""Building blocks of the CTR baselines, with analytic per-example ``flops()``/``num_params()``.

FLOPs are counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts them:
``2 * M * N * K`` per matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and nothing for
bias adds, activations, norms, dropout, element-wise products, reductions or embedding lookups.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from rankitect.data.spec import FeatureSpec
from rankitect.models.embedding import FeatureEmbedding

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """A parameter-free activation by case-insensitive name (BARS writes ``relu`` and ``ReLU``)."""
    cls = _ACTIVATIONS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return cls()


def as_units(units: Sequence[int], what: str) -> tuple[int, ...]:
    """Hidden units as a tuple of positive ints (Hydra passes a ``ListConfig``)."""
    if isinstance(units, str) or not isinstance(units, Iterable):
        raise ValueError(f"{what} must be a list of ints >= 1, got {units!r}")
    out = tuple(units)
    if not all(is_positive_int(u) for u in out):
        raise ValueError(f"{what} must all be ints >= 1, got {list(out)}")
    return tuple(int(u) for u in out)


def is_positive_int(value: object) -> bool:
    """An int >= 1 (not a bool, not a float such as 2.5 or NaN, which int() would truncate)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


class MLP(nn.Module):
    """Hidden layers ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``, then an optional plain
    ``Linear`` to ``out_dim`` (the logit layer: no norm, activation or dropout), as FuxiCTR's
    ``MLP_Block``. ``(B, in_dim) -> (B, out_features)``; with no layers it is the identity.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: Sequence[int],
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden = as_units(hidden_units, "MLP hidden_units")
        if in_dim < 1:
            raise ValueError(f"MLP in_dim must be >= 1, got {in_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout}")
        if out_dim is not None and out_dim < 1:
            raise ValueError(f"MLP out_dim must be >= 1 or None, got {out_dim}")
        make_activation(activation)  # fail early even when there is no hidden layer
        dims = (in_dim, *hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers.append(nn.Linear(d_in, d_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        if out_dim is not None:
            layers.append(nn.Linear(dims[-1], out_dim))
            dims = (*dims, out_dim)
        self.layers = nn.Sequential(*layers)
        self._dims = dims
        self._bn_features = sum(hidden) if batch_norm else 0
        self.out_features = dims[-1]
        # Activation checkpointing (`rankitect.system`): one segment per layer, so only each
        # segment's input is kept for the backward pass, which recomputes the rest.
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled() and len(self._dims) > 2:
            segments = len(self._dims) - 1
            return checkpoint_sequential(self.layers, segments, x, use_reentrant=False)
        return self.layers(x)

    def flops(self) -> int:
        return sum(2 * a * b for a, b in zip(self._dims[:-1], self._dims[1:], strict=True))

    def num_params(self) -> int:
        linear = sum(a * b + b for a, b in zip(self._dims[:-1], self._dims[1:], strict=True))
        return linear + 2 * self._bn_features  # BatchNorm1d: weight + bias per feature


class DotInteraction(nn.Module):
    """DLRM interaction: pairwise dot products of ``F`` vectors, ``(B, F, D) -> (B, F(F-1)/2)``.

    One ``bmm`` forms the whole ``F x F`` Gram matrix (``2 * F * F * D`` FLOPs, as counted), of
    which the strict upper triangle is kept.
    """

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        if num_features < 2:
            raise ValueError(f"DotInteraction needs >= 2 feature vectors, got {num_features}")
        if dim < 1:
            raise ValueError(f"DotInteraction dim must be >= 1, got {dim}")
        self.num_features = num_features
        self.dim = dim
        rows, cols = torch.triu_indices(num_features, num_features, offset=1)
        self.register_buffer("flat_index", rows * num_features + cols, persistent=False)
        self.out_features = num_features * (num_features - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(x, x.transpose(1, 2))
        return gram.flatten(1)[:, self.flat_index]

    def flops(self) -> int:
        return 2 * self.num_features * self.num_features * self.dim


class CrossNetV2(nn.Module):
    """DCN-v2 full-rank cross layers ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` on ``(B, dim)``."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"CrossNetV2 dim must be >= 1, got {dim}")
        if not is_positive_int(num_layers):
            raise ValueError(f"CrossNetV2 num_layers must be >= 1, got {num_layers}")
        self.dim = dim
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x

    def flops(self) -> int:
        return 2 * len(self.layers) * self.dim * self.dim

    def num_params(self) -> int:
        return len(self.layers) * (self.dim * self.dim + self.dim)


class FactorizationMachine(nn.Module):
    """FM second-order term ``sum_{i<j} <e_i, e_j>``: ``(B, N, D) -> (B,)``.

    Uses the ``O(N D)`` identity ``((sum_i e_i)^2 - sum_i e_i^2).sum() / 2``: element-wise work
    only, so 0 FLOPs in ``FlopCounterMode``'s count, and no parameters.
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_squares = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class FirstOrder(nn.Module):
    """First-order (LR) term without bias: ``(B, n_dense), (B, n_sparse) -> (B,)``.

    A learned weight per sparse id (an embedding of dim 1, summed over fields) plus a bias-free
    linear map of the dense features (``2 * n_dense`` FLOPs).
    """

    def __init__(self, spec: FeatureSpec, init_std: float = 1e-4) -> None:
        super().__init__()
        self.weights = FeatureEmbedding(spec, 1, init_std)
        self.dense = nn.Linear(spec.n_dense, 1, bias=False) if spec.n_dense else None
        self.n_dense = spec.n_dense

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        out = self.weights(sparse).sum(dim=(1, 2))
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(-1)
        return out

    def flops(self) -> int:
        return 2 * self.n_dense

    def num_params(self) -> int:
        return self.weights.num_params() + self.n_dense
