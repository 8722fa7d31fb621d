"""The blocks of a Choice (paper §3.1), each one ``nn.Module`` that serves three uses.

Every block module holds its weights at the largest layout it is built for and computes

- under *hard masks* (`hard`): on the leading or indexed slices of its weights that one
  architecture uses, given as `Span`s (the supernet's dynamic execution of partial operators);
- under *soft masks* (`soft`): on its whole weights, with every feature weighted by a
  *support* in [0, 1] (DNAS);
- as a *materialised* subnet: the same class built at exactly one architecture's sizes, so its
  `Span`s cover whole tensors and `hard` is a plain forward. `sliced` returns the state dict of
  that compact module cut out of the large one, which makes weight transfer exact.

Normalisation, activation, initialisation and dropout are the space's `LayerSettings`, so a
block's maths and its norm/init live here alone. Shapes: ``(B, N, D)`` for 3-D embeddings,
``(B, S)`` for 2-D vectors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LINEAR = "linear"
EMBED_FC = "embed_fc"
DOT_PRODUCT = "dot_product"
PAIRWISE_GATING = "pairwise_gating"
PAIRWISE_SUM = "pairwise_sum"
DOT = "dot"

BLOCKS = (LINEAR, EMBED_FC, DOT_PRODUCT, PAIRWISE_GATING, PAIRWISE_SUM, DOT)
# Blocks reading a subset of the candidate inputs ("K independent binary masks").
CONNECTION_BLOCKS = (LINEAR, EMBED_FC, DOT_PRODUCT, DOT)
# Connection blocks owning a searched output dimension (DLRM's dot interaction has none).
DIM_BLOCKS = (LINEAR, EMBED_FC, DOT_PRODUCT)
# Blocks reading one (left, right) pair of inputs; their width is the right input's width.
PAIRWISE_BLOCKS = (PAIRWISE_GATING, PAIRWISE_SUM)
# Blocks reading the 3-D adaptor (all inputs stacked as rows of an ``(B, N, D)`` tensor).
ROW_BLOCKS = (EMBED_FC, DOT_PRODUCT)
# Blocks producing a 2-D output; EmbedFC alone produces a 3-D one.
BLOCKS_2D = (LINEAR, DOT_PRODUCT, PAIRWISE_GATING, PAIRWISE_SUM, DOT)

NORM_EPS = 1e-5
BN_MOMENTUM = 0.1  # nn.BatchNorm1d's, so a seed built of these blocks equals the BARS DNN
NORMS = ("batch", "layer", "none")
NORM_ORDERS = ("before_act", "after_act")
INITS = ("xavier", "torch")
ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


@dataclass(frozen=True)
class LayerSettings:
    """How every block of a space trains: the same in the supernet, each subnet and a retrain.

    ``norm``: ``batch`` (per feature across the batch, as the BARS baselines), ``layer`` (per
    example across features, as the paper) or ``none``; ``norm_order``: the norm ``before_act``
    (Linear -> norm -> act, as BARS' MLP) or ``after_act``; ``init``: ``xavier`` (xavier-normal
    weights, zero biases, as FuxiCTR) or ``torch`` (PyTorch's default uniform); ``dropout`` on
    every Choice output; ``emb_l2``: the embedding regulariser ``emb_l2 / 2 * ||E||^2``;
    ``emb_init_std``: std of the normal embedding initialisation.
    """

    norm: str = "batch"
    norm_order: str = "before_act"
    activation: str = "relu"
    init: str = "xavier"
    dropout: float = 0.0
    emb_l2: float = 0.0
    emb_init_std: float = 1e-4

    def __post_init__(self) -> None:
        for key, value, known in (
            ("norm", self.norm, NORMS),
            ("norm_order", self.norm_order, NORM_ORDERS),
            ("activation", self.activation, tuple(ACTIVATIONS)),
            ("init", self.init, INITS),
        ):
            if value not in known:
                raise ValueError(f"layer.{key}: unknown value {value!r}; choose one of {known}")
        for key, value, ok, rule in (
            ("dropout", self.dropout, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
            ("emb_l2", self.emb_l2, lambda v: v >= 0.0, ">= 0"),
            ("emb_init_std", self.emb_init_std, lambda v: v >= 0.0, ">= 0"),
        ):
            if not is_real(value) or not ok(float(value)):  # NaN fails every comparison
                raise ValueError(f"layer.{key} must be a number {rule}, got {value!r}")

    @classmethod
    def from_config(cls, config: LayerSettings | Mapping[str, Any] | None) -> LayerSettings:
        """Settings from a space YAML's ``layer:`` mapping (``None``: the defaults)."""
        if config is None or isinstance(config, LayerSettings):
            return config or cls()
        if not isinstance(config, Mapping):
            raise ValueError(f"layer: expected a mapping of settings, got {config!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"layer: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def act(self, z: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](z)


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Span:
    """Where a compact tensor's features sit in the largest layout: ``[start, start + size)``,
    or ``index`` when they are scattered (the compressed dot product's rows x dims)."""

    size: int
    start: int = 0
    index: torch.Tensor | None = None

    def take(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        if self.index is None:
            return (
                t
                if self.start == 0 and self.size == t.shape[dim]
                else t.narrow(dim, self.start, self.size)
            )
        return t.index_select(dim, self.index)


def init_weight(shape: tuple[int, ...], fan_in: int, fan_out: int, init: str) -> nn.Parameter:
    """A weight of ``shape`` as a layer of ``fan_in -> fan_out`` would be initialised."""
    if init == "xavier":
        return nn.Parameter(torch.randn(shape) * math.sqrt(2.0 / (fan_in + fan_out)))
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def init_bias(shape: tuple[int, ...], fan_in: int, init: str) -> nn.Parameter:
    if init == "xavier":
        return nn.Parameter(torch.zeros(shape))
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _prefix_masks(options: Sequence[int]) -> torch.Tensor:
    """``(n_options, max)``: row o has ones on the first ``options[o]`` positions."""
    return (torch.arange(options[-1]) < torch.tensor(options)[:, None]).float()


def cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)


# ---- the maths shared by the blocks -------------------------------------------------------------


def embed_fc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Linear map on the middle axis: ``(B, N, D)`` with weight ``(M, N)`` -> ``(B, M, D)``."""
    return F.linear(x.transpose(1, 2), weight, bias).transpose(1, 2)


def compressed_dot(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``flatten(bmm(X, EmbedFC(X)^T))``: ``(B, N, D)`` -> ``(B, N * M)``, row-major in (N, M)."""
    return torch.bmm(x, embed_fc(x, weight, bias).transpose(1, 2)).flatten(1)


def interact(kind: str, projected_left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Pairwise interaction of ``FC_ij(x_i)`` with ``x_j`` (same width)."""
    if kind == PAIRWISE_GATING:
        return torch.sigmoid(projected_left) * right
    if kind == PAIRWISE_SUM:
        return projected_left + right
    raise ValueError(f"unknown pairwise block {kind!r}")


def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """3-D adaptor: concatenate ``(B, n_i, D)`` pieces along the middle axis."""
    return cat(rows, 1)


def flatten_2d(x: torch.Tensor) -> torch.Tensor:
    """2-D view of an input: 2-D tensors as they are, ``(B, M, D)`` flattened to ``(B, M * D)``."""
    return x if x.dim() == 2 else x.flatten(1)


def pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[-1]))


def dot_rows(width: int, embedding_dim: int) -> int:
    """Rows of D that the dot block reads a flat view of ``width`` features as."""
    return -(-width // embedding_dim)


def as_rows(flat: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """``(B, S)`` -> ``(B, ceil(S / D), D)``, the last row zero-padded."""
    rows = dot_rows(flat.shape[-1], embedding_dim)
    return pad(flat, rows * embedding_dim).view(flat.shape[0], rows, embedding_dim)


def pairwise_dots(rows: torch.Tensor) -> torch.Tensor:
    """DLRM's interaction: ``(B, F, D)`` -> the ``F(F-1)/2`` dot products of distinct rows,
    the strict upper triangle of the Gram matrix, row-major (``2 F^2 D`` FLOPs, as counted)."""
    n = rows.shape[1]
    i, j = torch.triu_indices(n, n, 1, device=rows.device)
    return torch.bmm(rows, rows.transpose(1, 2))[:, i, j]


# ---- normalisation -------------------------------------------------------------------------------


class BlockNorm(nn.Module):
    """A block's output normalisation over ``width`` features (``(B, width)`` inputs).

    ``batch``: affine BatchNorm with running statistics; under hard masks the statistics of the
    sliced features are read and updated in place, so a materialised subnet inherits them.
    With ``batch_stats_in_eval`` (the supernet sets it) evaluation also normalises with the
    batch's statistics: a shared feature's running statistics mix every subnet that used it.
    ``layer``: LayerNorm over the active features only. ``none``: identity.
    """

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        self.kind = kind
        self.batch_stats_in_eval = False
        if kind != "none":
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(width))
            self.register_buffer("running_var", torch.ones(width))

    def sliced(self, span: Span) -> dict[str, torch.Tensor]:
        """This norm's state cut to the features ``span`` (named as in a compact `BlockNorm`)."""
        if self.kind == "none":
            return {}
        names = ("weight", "bias", "running_mean", "running_var")
        return {n: span.take(getattr(self, n), 0) for n in names if hasattr(self, n)}

    def hard(self, z: torch.Tensor, span: Span) -> torch.Tensor:
        """Normalise ``(B, span.size)`` features sitting at ``span`` of this norm's width."""
        if self.kind == "none":
            return z
        weight, bias = span.take(self.weight, 0), span.take(self.bias, 0)
        if self.kind == "layer":
            return F.layer_norm(z, weight.shape, weight, bias, NORM_EPS)
        if not self.training and self.batch_stats_in_eval:
            return F.batch_norm(z, None, None, weight, bias, True, 0.0, NORM_EPS)
        if span.index is None:  # views: batch_norm updates the running statistics in place
            mean, var = span.take(self.running_mean, 0), span.take(self.running_var, 0)
            return F.batch_norm(z, mean, var, weight, bias, self.training, BN_MOMENTUM, NORM_EPS)
        mean, var = self.running_mean[span.index], self.running_var[span.index]
        out = F.batch_norm(z, mean, var, weight, bias, self.training, BN_MOMENTUM, NORM_EPS)
        if self.training:
            with torch.no_grad():
                self.running_mean.index_copy_(0, span.index, mean)
                self.running_var.index_copy_(0, span.index, var)
        return out

    def soft(self, z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, width)`` features weighted by ``support`` ``(b, width)`` in [0, 1].

        With a 0/1 support this equals `hard` on the supported features (elsewhere the value
        is arbitrary: callers multiply by the support)."""
        if self.kind == "none":
            return z
        if self.kind == "layer":
            total = support.sum(-1, keepdim=True).clamp_min(1e-12)
            mean = (z * support).sum(-1, keepdim=True) / total
            var = (support * (z - mean).square()).sum(-1, keepdim=True) / total
            return (z - mean) * torch.rsqrt(var + NORM_EPS) * self.weight + self.bias
        if not self.training and not self.batch_stats_in_eval:
            mean, var = self.running_mean, self.running_var
        else:
            s = support.expand_as(z)
            total = s.sum(0)
            mean = (s * z).sum(0) / total.clamp_min(1e-12)
            var = (s * (z - mean).square()).sum(0) / total.clamp_min(1e-12)
            if self.training:
                self._update_running(mean.detach(), var.detach(), total.detach())
        return (z - mean) * torch.rsqrt(var + NORM_EPS) * self.weight + self.bias

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        # as BatchNorm: unbiased variance; features with no support keep their statistics
        seen = n > 0
        unbiased = var * n / (n - 1).clamp_min(1e-12)
        m = BN_MOMENTUM
        self.running_mean.copy_(
            torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean)
        )
        self.running_var.copy_(
            torch.where(seen, (1 - m) * self.running_var + m * unbiased, self.running_var)
        )


def _settled(settings: LayerSettings, z: torch.Tensor, normed) -> torch.Tensor:
    """Norm and activation in the configured order; ``normed(t)`` normalises ``t``."""
    if settings.norm_order == "before_act":
        return settings.act(normed(z))
    return normed(settings.act(z))


# ---- the blocks ----------------------------------------------------------------------------------


class LinearBlock(nn.Module):
    """2-D adaptor (flatten and concatenate the chosen inputs) -> linear -> norm/act: ``(B, dim)``.

    One weight block per candidate input ``(width, fan_in_k)``, so a subset of inputs slices
    columns of blocks and a smaller dim slices leading rows.
    """

    def __init__(
        self, fan_ins: Mapping[int, int], options: Sequence[int], settings: LayerSettings
    ) -> None:
        super().__init__()
        width, total = options[-1], sum(fan_ins.values())
        self.settings = settings
        self.weight = nn.ParameterDict(
            {
                str(k): init_weight((width, f), total, width, settings.init)
                for k, f in fan_ins.items()
            }
        )
        self.bias = init_bias((width,), total, settings.init)
        self.norm = BlockNorm(settings.norm, width)
        self.register_buffer("prefix", _prefix_masks(options), persistent=False)

    def _weights(self, inputs: Sequence[int], dim: int, spans: Mapping[int, Span]):
        cols = [spans[k].take(self.weight[str(k)][:dim], 1) for k in inputs]
        return cat(cols, 1), self.bias[:dim]

    def sliced(self, inputs: Sequence[int], dim: int, spans: Mapping[int, Span]):
        weight, bias = self._weights(inputs, dim, spans)
        cols = [spans[k].size for k in inputs]
        state = {f"weight.{k}": w for k, w in zip(inputs, weight.split(cols, 1), strict=True)}
        return {**state, "bias": bias, **prefixed("norm", self.norm.sliced(Span(dim)))}

    def hard(
        self, inputs: Sequence[int], dim: int, spans: Mapping[int, Span], xs: list[torch.Tensor]
    ) -> torch.Tensor:
        weight, bias = self._weights(inputs, dim, spans)
        z = F.linear(cat([flatten_2d(x) for x in xs], 1), weight, bias)
        return _settled(self.settings, z, lambda t: self.norm.hard(t, Span(dim)))

    def soft(
        self, flats: dict[int, torch.Tensor], dims: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = list(flats)
        x = cat([flats[k] for k in keys], 1)
        z = F.linear(x, cat([self.weight[str(k)] for k in keys], 1), self.bias)
        support = dims @ self.prefix
        out = _settled(self.settings, z, lambda t: self.norm.soft(t, support))
        return support * out, support


class RowAdaptor(nn.Module):
    """3-D adaptor of one Choice: projections ``(D x width2d)`` of its 2-D candidates to a row."""

    def __init__(self, widths: Mapping[int, int], embedding_dim: int, init: str) -> None:
        super().__init__()
        d = embedding_dim
        self.weight = nn.ParameterDict(
            {str(k): init_weight((d, w), w, d, init) for k, w in widths.items()}
        )
        self.bias = nn.ParameterDict({str(k): init_bias((d,), w, init) for k, w in widths.items()})

    def sliced(self, k: int, span: Span) -> dict[str, torch.Tensor]:
        return {f"weight.{k}": span.take(self.weight[str(k)], 1), f"bias.{k}": self.bias[str(k)]}

    def project(self, k: int, x2: torch.Tensor, span: Span | None = None) -> torch.Tensor:
        weight = self.weight[str(k)] if span is None else span.take(self.weight[str(k)], 1)
        return F.linear(x2, weight, self.bias[str(k)])


class RowBlock(nn.Module):
    """EmbedFC ``(B, dim, D)`` or compressed dot product ``(B, rows * dim)`` over row slots.

    ``slots[k]``: the row slots of candidate k (its projected 2-D row, then its 3-D rows). The
    norm covers every output feature: ``dim * D`` for EmbedFC under BatchNorm (D under
    LayerNorm, per row), ``rows * dim`` for the dot product.
    """

    def __init__(
        self,
        block: str,
        slots: Mapping[int, int],
        options: Sequence[int],
        embedding_dim: int,
        settings: LayerSettings,
    ) -> None:
        super().__init__()
        self.block, self.settings, self.d = block, settings, embedding_dim
        m, n_rows = options[-1], sum(slots.values())
        self.weight = nn.ParameterDict(
            {str(k): init_weight((m, n), n_rows, m, settings.init) for k, n in slots.items()}
        )
        self.bias = init_bias((m,), n_rows, settings.init)
        if block == EMBED_FC:
            width = embedding_dim if settings.norm == "layer" else m * embedding_dim
        else:
            width = n_rows * m
        self.norm = BlockNorm(settings.norm, width)
        self.register_buffer("prefix", _prefix_masks(options), persistent=False)

    def _norm_span(self, dim: int, dot_span: Span | None) -> Span:
        if self.block == DOT_PRODUCT:
            return dot_span
        return Span(self.d) if self.settings.norm == "layer" else Span(dim * self.d)

    def _weights(self, inputs: Sequence[int], dim: int, slots: Sequence[Span]):
        cols = [s.take(self.weight[str(k)][:dim], 1) for k, s in zip(inputs, slots, strict=True)]
        return cat(cols, 1), self.bias[:dim]

    def sliced(self, inputs, dim, slots, dot_span) -> dict[str, torch.Tensor]:
        weight, bias = self._weights(inputs, dim, slots)
        parts = weight.split([s.size for s in slots], 1)
        state = {f"weight.{k}": w for k, w in zip(inputs, parts, strict=True)}
        norm = self.norm.sliced(self._norm_span(dim, dot_span))
        return {**state, "bias": bias, **prefixed("norm", norm)}

    def hard(self, inputs, dim, slots, dot_span, rows: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights(inputs, dim, slots)
        span = self._norm_span(dim, dot_span)
        if self.block == DOT_PRODUCT:
            z = compressed_dot(rows, weight, bias)
            return _settled(self.settings, z, lambda t: self.norm.hard(t, span))
        z = embed_fc(rows, weight, bias)
        if self.settings.norm == "layer":
            return _settled(self.settings, z, lambda t: self.norm.hard(t, span))
        flat = _settled(self.settings, z.flatten(1), lambda t: self.norm.hard(t, span))
        return flat.view_as(z)

    def soft(
        self, rows: torch.Tensor, row_support: torch.Tensor, dims: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows (B, n_rows, D)`` with ``row_support (b, n_rows)``; returns the output and its
        support: ``(B, M, D)`` and row mask ``(b, M)`` for EmbedFC, flat ``(B, n_rows * M)``
        and its support for the dot product."""
        weight = cat(list(self.weight.values()), 1)
        mask = dims @ self.prefix  # (b, M)
        if self.block == DOT_PRODUCT:
            support = (row_support.unsqueeze(-1) * mask.unsqueeze(-2)).flatten(1)
            z = compressed_dot(rows, weight, self.bias)
            out = _settled(self.settings, z, lambda t: self.norm.soft(t, support))
            return support * out, support
        z = embed_fc(rows, weight, self.bias)
        if self.settings.norm == "layer":
            ones = z.new_ones(1, self.d)
            out = _settled(self.settings, z, lambda t: self.norm.soft(t, ones))
        else:
            support = mask.repeat_interleave(self.d, dim=1)
            flat = _settled(self.settings, z.flatten(1), lambda t: self.norm.soft(t, support))
            out = flat.view_as(z)
        return mask.unsqueeze(-1) * out, mask


class DotBlock(nn.Module):
    """DLRM's parameter-free dot interaction: ``(B, F(F-1)/2)`` pairwise dot products of the
    rows of its chosen inputs, in input order. A 3-D input gives its rows, a 2-D one its
    features cut into rows of D (the last zero-padded), unprojected; no norm or activation.

    ``rows[k]``: the rows of candidate k at its largest layout. Its inputs' features sit at
    the front of their largest layouts (`SearchSpace` checks it), so an architecture's rows
    are the leading rows of each candidate's and the supernet's max layout holds them all.
    """

    def __init__(self, rows: Mapping[int, int], embedding_dim: int) -> None:
        super().__init__()
        self.rows, self.d = dict(rows), embedding_dim

    def sliced(self) -> dict[str, torch.Tensor]:
        return {}

    def hard(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return pairwise_dots(cat([as_rows(flatten_2d(x), self.d) for x in xs], 1))

    def soft(
        self, flats: dict[int, tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From every candidate's (flat view, support), already scaled by its connection
        weight: the dots of all max-layout rows and their supports (a row's support is its
        first feature's, which is 1 exactly when an architecture has that row)."""
        rows, support = [], []
        for k, n in self.rows.items():
            x, s = flats[k]
            rows.append(as_rows(x, self.d))
            support.append(pad(s, n * self.d)[:, :: self.d])
        x, s = cat(rows, 1), cat(support, 1)
        n = x.shape[1]
        i, j = torch.triu_indices(n, n, 1, device=x.device)
        return pairwise_dots(x), s[:, i] * s[:, j]


class PairwiseBlock(nn.Module):
    """``interaction(FC_ij(x_i), x_j)`` -> norm/act, at the right input's flat width; its norm
    at the widest candidate's width."""

    def __init__(self, kind: str, width: int, settings: LayerSettings) -> None:
        super().__init__()
        self.kind, self.settings = kind, settings
        self.norm = BlockNorm(settings.norm, width)

    def sliced(self, span: Span) -> dict[str, torch.Tensor]:
        return prefixed("norm", self.norm.sliced(span))

    def hard(self, projected: torch.Tensor, right: torch.Tensor, span: Span) -> torch.Tensor:
        z = interact(self.kind, projected, flatten_2d(right))
        return _settled(self.settings, z, lambda t: self.norm.hard(t, span))

    def soft(self, z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        out = _settled(self.settings, z, lambda t: self.norm.soft(t, support))
        return support * out


class PairFC(nn.Module):
    """Shared ``FC_ij`` through a bottleneck: flat width of input i -> bottleneck -> that of j
    (two linear maps, no activation between)."""

    def __init__(self, fan_in: int, bottleneck: int, fan_out: int, init: str) -> None:
        super().__init__()
        self.w1 = init_weight((bottleneck, fan_in), fan_in, bottleneck, init)
        self.b1 = init_bias((bottleneck,), fan_in, init)
        self.w2 = init_weight((fan_out, bottleneck), bottleneck, fan_out, init)
        self.b2 = init_bias((fan_out,), bottleneck, init)

    def sliced(self, left: Span, right: Span) -> dict[str, torch.Tensor]:
        return {
            "w1": left.take(self.w1, 1),
            "b1": self.b1,
            "w2": right.take(self.w2, 0),
            "b2": right.take(self.b2, 0),
        }

    def hard(self, x: torch.Tensor, left: Span, right: Span) -> torch.Tensor:
        hidden = F.linear(flatten_2d(x), left.take(self.w1, 1), self.b1)
        return F.linear(hidden, right.take(self.w2, 0), right.take(self.b2, 0))

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.w1, self.b1), self.w2, self.b2)


class Classifier(nn.Module):
    """Final classification layer: flat view of the last Choice -> ``(B,)`` logits."""

    def __init__(self, width: int, init: str) -> None:
        super().__init__()
        self.weight = init_weight((1, width), width, 1, init)
        self.bias = init_bias((1,), width, init)

    def sliced(self, span: Span) -> dict[str, torch.Tensor]:
        return {"weight": span.take(self.weight, 1), "bias": self.bias}

    def hard(self, x: torch.Tensor, span: Span | None = None) -> torch.Tensor:
        weight = self.weight if span is None else span.take(self.weight, 1)
        return F.linear(flatten_2d(x), weight, self.bias).squeeze(-1)


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}
