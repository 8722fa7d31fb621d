"""DHEN: Deep and Hierarchical Ensemble Network (Zhang et al. 2022, arXiv:2203.11014).

Stacked layers over ``X (B, n, D)``: layer 0 reads the field embeddings, plus the dense
features projected to one row when there are any (``n = N + [n_dense > 0]``). Each layer is an
ensemble of interaction modules, every one mapping ``X`` to ``(B, n, D)`` through an *inner
width*; their outputs are summed, added to the residual ``X`` and normalised
(``LayerNorm`` over ``D``). A head MLP maps the flattened last layer to one logit.

Modules are looked up by name in `INTERACTION_MODULES` (`register_module` adds one). Each
takes its inner width as a constructor argument, and every forward can also run it at a
smaller width (weights sliced to the leading ``width`` units) or under a soft mask over its
inner units: that is how the DHEN search space uses a DHEN at its largest widths as the
weight-sharing supernet (`rankitect.space.dhen`).

FLOPs follow ``FlopCounterMode``: ``2 * M * N * K`` per matmul, ``2 * out * in * kernel`` per
convolution output element; bias adds, activations, softmax, LayerNorm and element-wise
products count 0. Every module's FLOPs are linear in its inner width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import as_units
from rankitect.models.embedding import FeatureEmbedding

CONV_KERNEL = 3  # the convolution module's square kernel (odd: "same" padding keeps n x D)


def _xavier(shape: tuple[int, ...], fan_in: int, fan_out: int) -> nn.Parameter:
    # FuxiCTR's xavier-normal, with the fans of the logical matrix (some tensors are 3-D/4-D)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return nn.Parameter(torch.randn(shape) * std)


def _zeros(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape))


class InteractionModule(nn.Module):
    """``X (B, n, D) -> (B, n, D)`` through ``width`` inner units.

    ``width_axes`` maps each parameter to the axis indexed by the inner units (``None``: the
    parameter does not depend on the width); `sliced` takes the leading ``width`` of that axis.
    ``forward(x, width=None, mask=None)``: ``width`` runs the module at a smaller width on
    sliced weights (what a module built at that width computes); ``mask (b, width)`` (b = 1 or
    B) scales the inner units (soft dimension masks). Costs are ``flops_per_width * width``
    FLOPs and ``params_per_width * width + params_fixed`` parameters.
    """

    width_axes: dict[str, int | None] = {}

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__()
        if rows < 1 or dim < 1 or width < 1:
            raise ValueError(
                f"{type(self).__name__}: rows, dim and width must be >= 1, got {rows}, {dim}, "
                f"{width}"
            )
        self.rows, self.dim, self.width = rows, dim, width

    def sliced(self, width: int | None) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        if width is None or width == self.width:
            return params
        if not 1 <= width <= self.width:
            raise ValueError(f"{type(self).__name__}: width {width} outside 1..{self.width}")
        return {
            k: p if self.width_axes[k] is None else p.narrow(self.width_axes[k], 0, width)
            for k, p in params.items()
        }

    @staticmethod
    def flops_per_width(rows: int, dim: int) -> int:
        raise NotImplementedError

    @staticmethod
    def params_per_width(rows: int, dim: int) -> int:
        raise NotImplementedError

    @staticmethod
    def params_fixed(rows: int, dim: int) -> int:
        raise NotImplementedError


def _masked(h: torch.Tensor, mask: torch.Tensor | None, axis: int) -> torch.Tensor:
    """``h`` with its inner-unit axis ``axis`` scaled by ``mask (b, width)``."""
    if mask is None:
        return h
    shape = [mask.shape[0]] + [1] * (h.dim() - 1)
    shape[axis] = mask.shape[1]
    return h * mask.reshape(shape)


class MLPModule(InteractionModule):
    """``Linear(nD, w) -> ReLU -> Linear(w, nD)`` on the flattened layer input."""

    width_axes = {"w1": 0, "b1": 0, "w2": 1, "b2": None}

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__(rows, dim, width)
        f = rows * dim
        self.w1, self.b1 = _xavier((width, f), f, width), _zeros(width)
        self.w2, self.b2 = _xavier((f, width), width, f), _zeros(f)

    def forward(self, x, width=None, mask=None):
        p = self.sliced(width)
        h = _masked(F.relu(F.linear(x.flatten(1), p["w1"], p["b1"])), mask, 1)
        return F.linear(h, p["w2"], p["b2"]).view_as(x)

    @staticmethod
    def flops_per_width(rows, dim):
        return 4 * rows * dim

    @staticmethod
    def params_per_width(rows, dim):
        return 2 * rows * dim + 1

    @staticmethod
    def params_fixed(rows, dim):
        return rows * dim


class DotModule(InteractionModule):
    """Compressed dot product (DLRM/DHEN): ``C = W X (B, w, D)`` compresses the rows,
    ``Z = X C^T (B, n, w)`` holds every row's dot product with every compressed row, and
    ``Linear(n w, nD)`` maps the flattened ``Z`` back."""

    width_axes = {"wc": 0, "bc": 0, "wp": 2, "bp": None}

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__(rows, dim, width)
        f = rows * dim
        self.wc, self.bc = _xavier((width, rows), rows, width), _zeros(width)
        # (out, row, compressed row): the width axis stays contiguous for slicing
        self.wp, self.bp = _xavier((f, rows, width), rows * width, f), _zeros(f)

    def forward(self, x, width=None, mask=None):
        p = self.sliced(width)
        c = _masked(F.linear(x.transpose(1, 2), p["wc"], p["bc"]), mask, 2)  # (B, D, w)
        z = torch.bmm(x, c)  # (B, n, w)
        return F.linear(z.flatten(1), p["wp"].flatten(1), p["bp"]).view_as(x)

    @staticmethod
    def flops_per_width(rows, dim):
        return 2 * rows * dim + 2 * rows * dim + 2 * rows * rows * dim

    @staticmethod
    def params_per_width(rows, dim):
        return rows + 1 + rows * rows * dim

    @staticmethod
    def params_fixed(rows, dim):
        return rows * dim


class AttentionModule(InteractionModule):
    """Single-head self-attention over the rows: queries, keys, values ``D -> w``,
    ``softmax(Q K^T / sqrt(w)) V``, output projection ``w -> D``.

    Under a soft mask the queries and values are masked and the scale is ``1 / sqrt(sum(mask))``
    (the expected width), so a 0/1 prefix mask equals running at that width.
    """

    width_axes = {
        "wq": 0, "bq": 0, "wk": 0, "bk": 0, "wv": 0, "bv": 0, "wo": 1, "bo": None,
    }  # fmt: skip

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__(rows, dim, width)
        for name in ("q", "k", "v"):
            setattr(self, f"w{name}", _xavier((width, dim), dim, width))
            setattr(self, f"b{name}", _zeros(width))
        self.wo, self.bo = _xavier((dim, width), width, dim), _zeros(dim)

    def forward(self, x, width=None, mask=None):
        p = self.sliced(width)
        q = _masked(F.linear(x, p["wq"], p["bq"]), mask, 2)
        k = F.linear(x, p["wk"], p["bk"])
        v = _masked(F.linear(x, p["wv"], p["bv"]), mask, 2)
        w = q.shape[-1] if mask is None else mask.sum(-1).reshape(-1, 1, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) / (w**0.5 if mask is None else w.sqrt())
        out = torch.bmm(torch.softmax(scores, dim=-1), v)
        return F.linear(out, p["wo"], p["bo"])

    @staticmethod
    def flops_per_width(rows, dim):
        return 8 * rows * dim + 4 * rows * rows

    @staticmethod
    def params_per_width(rows, dim):
        return 4 * dim + 3

    @staticmethod
    def params_fixed(rows, dim):
        return dim


class CrossModule(InteractionModule):
    """DCN-v2 low-rank cross on the flattened input: ``x * (U (V^T x) + b)`` with rank ``w``
    (the layer adds the residual ``x``, completing ``x_{l+1} = x_0 * (U V^T x_l + b) + x_l``
    with ``x_0 = x_l``, the layer's input)."""

    width_axes = {"v": 0, "u": 1, "b": None}

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__(rows, dim, width)
        f = rows * dim
        self.v = _xavier((width, f), f, width)
        self.u, self.b = _xavier((f, width), width, f), _zeros(f)

    def forward(self, x, width=None, mask=None):
        p = self.sliced(width)
        x0 = x.flatten(1)
        h = _masked(F.linear(x0, p["v"]), mask, 1)
        return (x0 * F.linear(h, p["u"], p["b"])).view_as(x)

    @staticmethod
    def flops_per_width(rows, dim):
        return 4 * rows * dim

    @staticmethod
    def params_per_width(rows, dim):
        return 2 * rows * dim

    @staticmethod
    def params_fixed(rows, dim):
        return rows * dim


class ConvModule(InteractionModule):
    """``X`` as a one-channel ``n x D`` image: a 3x3 convolution to ``w`` channels ("same"
    padding), ReLU, and a 1x1 convolution back to one channel."""

    width_axes = {"w1": 0, "b1": 0, "w2": 1, "b2": None}

    def __init__(self, rows: int, dim: int, width: int) -> None:
        super().__init__(rows, dim, width)
        k2 = CONV_KERNEL * CONV_KERNEL
        self.w1 = _xavier((width, 1, CONV_KERNEL, CONV_KERNEL), k2, width * k2)
        self.b1 = _zeros(width)
        self.w2, self.b2 = _xavier((1, width, 1, 1), width, 1), _zeros(1)

    def forward(self, x, width=None, mask=None):
        p = self.sliced(width)
        h = F.relu(F.conv2d(x.unsqueeze(1), p["w1"], p["b1"], padding=CONV_KERNEL // 2))
        return F.conv2d(_masked(h, mask, 1), p["w2"], p["b2"]).squeeze(1)

    @staticmethod
    def flops_per_width(rows, dim):
        return 2 * rows * dim * (CONV_KERNEL * CONV_KERNEL + 1)

    @staticmethod
    def params_per_width(rows, dim):
        return CONV_KERNEL * CONV_KERNEL + 2

    @staticmethod
    def params_fixed(rows, dim):
        return 1


INTERACTION_MODULES: dict[str, type[InteractionModule]] = {
    "mlp": MLPModule,
    "dot": DotModule,
    "attention": AttentionModule,
    "cross": CrossModule,
    "conv": ConvModule,
}


def register_module(name: str):
    """Class decorator adding an `InteractionModule` to the registry under ``name``."""

    def add(cls: type[InteractionModule]) -> type[InteractionModule]:
        if name in INTERACTION_MODULES:
            raise ValueError(f"interaction module {name!r} is already registered")
        INTERACTION_MODULES[name] = cls
        return cls

    return add


def module_class(name: str) -> type[InteractionModule]:
    if name not in INTERACTION_MODULES:
        raise ValueError(
            f"unknown DHEN interaction module {name!r}; known: {sorted(INTERACTION_MODULES)}"
        )
    return INTERACTION_MODULES[name]


def check_layers(layers: Sequence[Mapping[str, int]]) -> tuple[dict[str, int], ...]:
    """Layers as plain ``{module name: inner width}`` dicts (Hydra passes DictConfigs)."""
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or not layer:
            raise ValueError(f"DHEN layers[{i}] must map module names to widths, got {layer!r}")
        widths = {}
        for name, width in layer.items():
            module_class(str(name))
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(
                    f"DHEN layers[{i}].{name}: width must be an int >= 1, got {width!r}"
                )
            widths[str(name)] = int(width)
        out.append(widths)
    if not out:
        raise ValueError("DHEN needs at least one layer")
    return tuple(out)


class DHENLayer(nn.Module):
    """Sum of the modules' outputs, plus the residual, then LayerNorm over ``D``."""

    def __init__(self, rows: int, dim: int, widths: Mapping[str, int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(
            {name: module_class(name)(rows, dim, w) for name, w in widths.items()}
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        widths: Mapping[str, int] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        out = x
        for name, module in self.blocks.items():
            out = out + module(
                x,
                None if widths is None else widths[name],
                None if masks is None else masks[name],
            )
        return self.norm(out)


class Head(nn.Module):
    """``Linear -> ReLU -> [Dropout]`` per hidden width, then ``Linear(h_k, 1)``."""

    def __init__(self, in_features: int, units: Sequence[int], dropout: float) -> None:
        super().__init__()
        dims = (in_features, *units)
        self.weights = nn.ParameterList(
            _xavier((b, a), a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.biases = nn.ParameterList(_zeros(b) for b in units)
        self.out_weight, self.out_bias = _xavier((1, dims[-1]), dims[-1], 1), _zeros(1)
        self.dropout = dropout

    def sliced(self, units: Sequence[int] | None) -> dict[str, torch.Tensor]:
        """Parameters (by state-dict name) at hidden widths ``units`` (leading slices)."""
        params = dict(self.named_parameters())
        if units is None:
            return params
        out = {}
        for i, h in enumerate(units):
            fan_in = self.weights[i].shape[1] if i == 0 else units[i - 1]
            out[f"weights.{i}"] = self.weights[i][:h, :fan_in]
            out[f"biases.{i}"] = self.biases[i][:h]
        out["out_weight"] = self.out_weight[:, : units[-1]] if units else self.out_weight
        out["out_bias"] = self.out_bias
        return out

    def forward(self, x, units=None, masks=None):
        p = self.sliced(units)
        for i in range(len(self.weights)):
            h = F.relu(F.linear(x, p[f"weights.{i}"], p[f"biases.{i}"]))
            x = _masked(h, None if masks is None else masks[i], 1)
            x = F.dropout(x, self.dropout, self.training)
        return F.linear(x, p["out_weight"], p["out_bias"]).squeeze(-1)


def dhen_flops(
    spec: FeatureSpec, embedding_dim: int, layers: Sequence[Mapping[str, float]], head: Sequence
):
    """Per-example FLOPs; widths may be expected widths (floats or tensors): the result is
    linear in every module width and multilinear in the head widths."""
    n, d = dhen_rows(spec), embedding_dim
    total = 2 * spec.n_dense * d  # the dense row's projection
    for layer in layers:
        for name, w in layer.items():
            total = total + module_class(name).flops_per_width(n, d) * w
    dims = (n * d, *head, 1)
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        total = total + 2 * a * b
    return total


def dhen_dense_params(
    spec: FeatureSpec, embedding_dim: int, layers: Sequence[Mapping[str, int]], head: Sequence[int]
) -> int:
    """Parameters outside the embedding table."""
    n, d = dhen_rows(spec), embedding_dim
    total = (spec.n_dense * d + d) if spec.n_dense else 0
    for layer in layers:
        total += 2 * d  # LayerNorm
        for name, w in layer.items():
            cls = module_class(name)
            total += cls.params_per_width(n, d) * w + cls.params_fixed(n, d)
    dims = (n * d, *head, 1)
    return total + sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))


def dhen_rows(spec: FeatureSpec) -> int:
    """Rows of every layer's input: one per sparse field, plus one for the dense features."""
    return spec.n_sparse + (1 if spec.n_dense else 0)


class DHEN(CTRModel):
    """DHEN over ``n = N + [n_dense > 0]`` rows of width ``D = embedding_dim``.

    Args:
        layers: one mapping per layer, ``{module name: inner width}`` (names from
            `INTERACTION_MODULES`: ``mlp``, ``dot``, ``attention``, ``cross``, ``conv``).
        head_units: hidden widths of the head MLP on the flattened last layer (may be empty).
        dropout: on the head's hidden layers while training.

    ``forward(dense, sparse, widths=None, masks=None)``: ``widths = (layers, head)`` runs the
    model at smaller widths on sliced weights, ``masks`` (same structure, ``(b, width)``
    tensors) under soft inner-unit masks; both are the search space's supernet interface.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 10,
        layers: Sequence[Mapping[str, int]] = (
            {"mlp": 256, "dot": 8, "attention": 16, "cross": 32, "conv": 8},
        )
        * 2,
        head_units: Sequence[int] = (400, 400),
        dropout: float = 0.0,
        emb_l2: float = 0.0,
        emb_init_std: float = 1e-4,
    ) -> None:
        super().__init__(spec, emb_l2)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DHEN dropout must be in [0, 1), got {dropout}")
        self.layer_widths = check_layers(layers)
        self.head_units = as_units(head_units, "DHEN head_units")
        self.embedding_dim = int(embedding_dim)
        self.embedding = FeatureEmbedding(spec, embedding_dim, emb_init_std)
        d, n = self.embedding_dim, dhen_rows(spec)
        self.dense_proj = nn.Linear(spec.n_dense, d) if spec.n_dense else None
        if self.dense_proj is not None:
            nn.init.xavier_normal_(self.dense_proj.weight)
            nn.init.zeros_(self.dense_proj.bias)
        self.layers = nn.ModuleList(DHENLayer(n, d, w) for w in self.layer_widths)
        self.head = Head(n * d, self.head_units, dropout)
        # recompute each layer's activations in the backward (the DNAS supernet sets it)
        self.checkpoint_layers = False

    def forward(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        widths: tuple[Sequence[Mapping[str, int]], Sequence[int]] | None = None,
        masks: tuple[Sequence[Mapping[str, torch.Tensor]], Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        x = self.embedding(sparse)
        if self.dense_proj is not None:
            x = torch.cat([self.dense_proj(dense).unsqueeze(1), x], dim=1)
        for i, layer in enumerate(self.layers):
            args = (
                x,
                None if widths is None else widths[0][i],
                None if masks is None else masks[0][i],
            )
            if self.checkpoint_layers and torch.is_grad_enabled():
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.head(
            x.flatten(1), None if widths is None else widths[1], None if masks is None else masks[1]
        )

    def sliced_state(
        self, layers: Sequence[Mapping[str, int]], head: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """The state dict of this DHEN's architecture at smaller widths: what a `DHEN` built
        with ``layers``/``head`` loads to compute exactly this model's sliced forward."""
        state = {
            k: v
            for k, v in self.state_dict(keep_vars=True).items()
            if not k.startswith(("layers.", "head."))
        }
        for i, (layer, widths) in enumerate(zip(self.layers, layers, strict=True)):
            for name, module in layer.blocks.items():
                for k, v in module.sliced(widths[name]).items():
                    state[f"layers.{i}.blocks.{name}.{k}"] = v
            for k, v in layer.norm.state_dict(keep_vars=True).items():
                state[f"layers.{i}.norm.{k}"] = v
        for k, v in self.head.sliced(head).items():
            state[f"head.{k}"] = v
        return {k: v.detach() for k, v in state.items()}

    def flops(self) -> int:
        return dhen_flops(self.spec, self.embedding_dim, self.layer_widths, self.head_units)

    def num_params(self) -> int:
        dense = dhen_dense_params(self.spec, self.embedding_dim, self.layer_widths, self.head_units)
        return self.embedding.num_params() + dense
