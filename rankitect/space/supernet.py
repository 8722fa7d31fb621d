"""The weight-sharing supernet: every block of every Choice at its largest dimension.

Three ways to run it (`Supernet.forward`):

- ``arch=``: hard masks of one architecture. Only reachable Choices, their chosen block and
  connections run, on weights sliced to the chosen widths (the paper's dynamic execution of
  partial operators); LayerNorm normalises over the active positions only, so the result
  equals the materialised subnet's.
- ``soft=``: one weight vector per decision (probabilities for DNAS). Blocks are mixed by
  their block weights, inputs scaled by their connection probability, dimensions by the
  expected prefix mask (reverse cumulative sum of the dimension probabilities), pairs by
  ``left_i * right_j``. Every tensor carries a *support* (how present each position is),
  and LayerNorm is weighted by it, so one-hot weights give exactly the hard-mask result.
  Differentiable in the weights.
- neither: the whole supernet (every block, connection and pair on, full dimensions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rankitect.models.embedding import FeatureEmbedding
from rankitect.space.arch import DENSE, SPARSE, Arch, ChoiceArch, choice_input
from rankitect.space.blocks import (
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    LN_EPS,
    PAIRWISE_BLOCKS,
    PAIRWISE_SUM,
    ROW_BLOCKS,
    bottleneck_fc,
    compressed_dot,
    embed_fc,
    interact,
    masked_norm_act,
    stack_rows,
)
from rankitect.space.cost import connection_weights
from rankitect.space.layout import ChoiceLayout, SpaceLayout, arch_shapes
from rankitect.space.space import SearchSpace
from rankitect.space.subnet import (
    pair_key,
    run_classifier,
    run_linear,
    run_pair_fc,
    run_pairwise,
    run_rows,
)


@dataclass(frozen=True)
class Span:
    """Where a compact tensor's features sit in the largest layout: ``[start, start + size)``,
    or ``index`` when they are scattered (the compressed dot product's rows x dims)."""

    size: int
    start: int = 0
    index: torch.Tensor | None = None

    def take(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        if self.index is None:
            return t.narrow(dim, self.start, self.size)
        return t.index_select(dim, self.index)


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _prefix_masks(options: Sequence[int]) -> torch.Tensor:
    """``(n_options, max)``: row o has ones on the first ``options[o]`` positions."""
    return (torch.arange(options[-1]) < torch.tensor(options)[:, None]).float()


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[-1]))


def _cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)


# ---- hard masks: the plan of one architecture ---------------------------------------------------


class HardPlan:
    """Index bookkeeping of one architecture in the supernet's largest layouts.

    ``spans[k]``: positions of input k's flat view; ``row_slots[c]``: for a row-block Choice,
    per input the slots (inside that input's own row block) its rows take; ``dot_spans[c]``:
    positions of a dot product's ``rows x dim`` outputs.
    """

    def __init__(self, space: SearchSpace, layout: SpaceLayout, arch: Arch, device: torch.device):
        d = space.embedding_dim
        shapes = arch_shapes(space, arch)
        self.spans: dict[int, Span] = {k: Span(shapes[k].flat(d)) for k in space.raw_inputs}
        self.row_slots: dict[int, list[Span]] = {}
        self.dot_spans: dict[int, Span] = {}
        for c in arch.reachable():
            ch, cl = arch.choices[c], layout.choices[c]
            if ch.block == LINEAR:
                span = Span(ch.dim)
            elif ch.block in PAIRWISE_BLOCKS:
                span = self.spans[ch.right]
            else:
                slots, rows = [], []
                for k in ch.inputs:
                    src = layout.sources[k]
                    # a 2-D input is projected into slot 0; 3-D rows follow the 2-D slot
                    slot = Span(shapes[k].size, int(src.has2d)) if shapes[k].is3d else Span(1)
                    slots.append(slot)
                    rows.append(torch.arange(slot.size) + cl.row_offsets[k] + slot.start)
                self.row_slots[c] = slots
                if ch.block == EMBED_FC:
                    span = Span(ch.dim * d)
                else:
                    m_max = space.choices[c].dims[DOT_PRODUCT][-1]
                    index = (torch.cat(rows)[:, None] * m_max + torch.arange(ch.dim)).flatten()
                    span = Span(index.numel(), index=index.to(device))
                    self.dot_spans[c] = span
            self.spans[choice_input(c)] = span


# ---- soft masks: weighted tensors with their supports -----------------------------------------


@dataclass
class SoftOut:
    """An input under soft masks, at its largest layout; values are already zero where the
    support is zero. ``x2 (B, S)``/``s2 (b, S)``: 2-D part and support; ``p2 (b, 1)``: weight
    of having a 2-D output; ``x3 (B, M, D)``/``r3 (b, M)``: 3-D part and row support."""

    x2: torch.Tensor | None
    s2: torch.Tensor | None
    p2: torch.Tensor | None
    x3: torch.Tensor | None
    r3: torch.Tensor | None


@dataclass
class ChoiceWeights:
    """One Choice's soft weights, each ``(b, ...)`` with b = 1 or B."""

    block: dict[str, torch.Tensor]  # (b, 1) per allowed block
    conn: dict[int, torch.Tensor]  # (b, 1) per candidate input
    dims: dict[str, torch.Tensor]  # (b, n_options) per connection block
    left: torch.Tensor | None  # (b, K)
    right: torch.Tensor | None


# input index -> (flat view, support), cached per forward
FlatFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
# (i, j) -> FC_ij of input i's flat view, shared by every Choice within a forward
PairFn = Callable[[int, int], torch.Tensor]


# ---- supernet modules --------------------------------------------------------------------------


class SuperLinear(nn.Module):
    """Linear block of one Choice: a weight block per candidate input, largest width."""

    def __init__(self, fan_ins: dict[int, int], options: Sequence[int]) -> None:
        super().__init__()
        width, total = options[-1], sum(fan_ins.values())
        self.weight = nn.ParameterDict(
            {str(k): _uniform((width, f), total) for k, f in fan_ins.items()}
        )
        self.bias = _uniform((width,), total)
        self.ln_weight = nn.Parameter(torch.ones(width))
        self.ln_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("prefix", _prefix_masks(options), persistent=False)

    def gather(self, ch: ChoiceArch, plan: HardPlan) -> dict[str, torch.Tensor]:
        cols = [plan.spans[k].take(self.weight[str(k)][: ch.dim], 1) for k in ch.inputs]
        return {
            "fc.weight": _cat(cols, 1),
            "fc.bias": self.bias[: ch.dim],
            "norm.weight": self.ln_weight[: ch.dim],
            "norm.bias": self.ln_bias[: ch.dim],
        }

    def soft(
        self, flats: dict[int, torch.Tensor], dims: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = list(flats)
        x = _cat([flats[k] for k in keys], 1)
        z = F.linear(x, _cat([self.weight[str(k)] for k in keys], 1), self.bias)
        support = dims @ self.prefix
        return masked_norm_act(z, support, self.ln_weight, self.ln_bias), support


class SuperRowAdaptor(nn.Module):
    """3-D adaptor of one Choice: projections ``(D x width2d)`` of its 2-D-capable candidates."""

    def __init__(self, widths: dict[int, int], embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.ParameterDict(
            {str(k): _uniform((embedding_dim, w), w) for k, w in widths.items()}
        )
        self.bias = nn.ParameterDict(
            {str(k): _uniform((embedding_dim,), w) for k, w in widths.items()}
        )

    def gather(self, ch: ChoiceArch, plan: HardPlan, is3d: list[bool]) -> dict[str, torch.Tensor]:
        out = {}
        for t, (k, three) in enumerate(zip(ch.inputs, is3d, strict=True)):
            if not three:
                out[f"proj.{t}.weight"] = plan.spans[k].take(self.weight[str(k)], 1)
                out[f"proj.{t}.bias"] = self.bias[str(k)]
        return out

    def project(self, k: int, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self.weight[str(k)], self.bias[str(k)])


class SuperRowBlock(nn.Module):
    """EmbedFC or compressed dot product of one Choice over all candidate row slots."""

    def __init__(
        self, block: str, cl: ChoiceLayout, slots: dict[int, int], options: Sequence[int], d: int
    ):
        super().__init__()
        self.block = block
        m = options[-1]
        self.weight = nn.ParameterDict(
            {str(k): _uniform((m, n), cl.n_rows) for k, n in slots.items()}
        )
        self.bias = _uniform((m,), cl.n_rows)
        norm = d if block == EMBED_FC else cl.n_rows * m
        self.ln_weight = nn.Parameter(torch.ones(norm))
        self.ln_bias = nn.Parameter(torch.zeros(norm))
        self.register_buffer("prefix", _prefix_masks(options), persistent=False)

    def gather(self, c: int, ch: ChoiceArch, plan: HardPlan) -> dict[str, torch.Tensor]:
        cols = [
            slot.take(self.weight[str(k)][: ch.dim], 1)
            for k, slot in zip(ch.inputs, plan.row_slots[c], strict=True)
        ]
        norm = plan.dot_spans[c] if self.block == DOT_PRODUCT else Span(self.ln_weight.numel())
        return {
            "weight": _cat(cols, 1),
            "bias": self.bias[: ch.dim],
            "norm.weight": norm.take(self.ln_weight, 0),
            "norm.bias": norm.take(self.ln_bias, 0),
        }

    def soft(
        self, rows: torch.Tensor, row_support: torch.Tensor, dims: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight = _cat(list(self.weight.values()), 1)
        mask = dims @ self.prefix  # (b, M)
        if self.block == EMBED_FC:
            z = F.layer_norm(
                embed_fc(rows, weight, self.bias),
                self.ln_weight.shape,
                self.ln_weight,
                self.ln_bias,
                LN_EPS,
            )
            return mask.unsqueeze(-1) * F.relu(z), mask
        support = (row_support.unsqueeze(-1) * mask.unsqueeze(-2)).flatten(1)
        z = compressed_dot(rows, weight, self.bias)
        return masked_norm_act(z, support, self.ln_weight, self.ln_bias), support


class SuperPairwise(nn.Module):
    """Pairwise gating or sum block of one Choice: its norm at the widest candidate's width."""

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        self.kind = kind
        self.ln_weight = nn.Parameter(torch.ones(width))
        self.ln_bias = nn.Parameter(torch.zeros(width))

    def gather(self, ch: ChoiceArch, plan: HardPlan) -> dict[str, torch.Tensor]:
        span = plan.spans[ch.right]
        return {
            "norm.weight": span.take(self.ln_weight, 0),
            "norm.bias": span.take(self.ln_bias, 0),
        }


class SuperPairFC(nn.Module):
    """Shared ``FC_ij`` at the largest flat widths of inputs i and j."""

    def __init__(self, fan_in: int, bottleneck: int, fan_out: int) -> None:
        super().__init__()
        self.w1 = _uniform((bottleneck, fan_in), fan_in)
        self.b1 = _uniform((bottleneck,), fan_in)
        self.w2 = _uniform((fan_out, bottleneck), bottleneck)
        self.b2 = _uniform((fan_out,), bottleneck)

    def gather(self, left: Span, right: Span) -> dict[str, torch.Tensor]:
        return {
            "fc1.weight": left.take(self.w1, 1),
            "fc1.bias": self.b1,
            "fc2.weight": right.take(self.w2, 0),
            "fc2.bias": right.take(self.b2, 0),
        }

    def soft(self, left: torch.Tensor) -> torch.Tensor:
        return bottleneck_fc(left, self.w1, self.b1, self.w2, self.b2)


class SuperChoice(nn.Module):
    """All allowed blocks of one Choice, with their adaptors, at the largest layout."""

    def __init__(self, space: SearchSpace, layout: SpaceLayout, c: int) -> None:
        super().__init__()
        sp, cl = space.choices[c], layout.choices[c]
        d = space.embedding_dim
        self.index, self.layout, self.candidates = c, cl, sp.candidates
        srcs = {k: layout.sources[k] for k in sp.candidates}
        self.blocks = nn.ModuleDict()
        if LINEAR in sp.blocks:
            self.blocks[LINEAR] = SuperLinear({k: s.flat for k, s in srcs.items()}, sp.dims[LINEAR])
        if any(b in ROW_BLOCKS for b in sp.blocks):
            self.adaptor = SuperRowAdaptor({k: s.width2d for k, s in srcs.items() if s.has2d}, d)
            slots = {k: s.row_slots for k, s in srcs.items()}
            for b in ROW_BLOCKS:
                if b in sp.blocks:
                    self.blocks[b] = SuperRowBlock(b, cl, slots, sp.dims[b], d)
        for b in PAIRWISE_BLOCKS:
            if b in sp.blocks:
                self.blocks[b] = SuperPairwise(b, cl.pair_width)

    def gather(self, ch: ChoiceArch, plan: HardPlan, is3d: list[bool]) -> dict[str, torch.Tensor]:
        """Compact parameters of this Choice under ``ch``, named as in the subnet's module."""
        block = self.blocks[ch.block]
        if ch.block in ROW_BLOCKS:
            return {**self.adaptor.gather(ch, plan, is3d), **block.gather(self.index, ch, plan)}
        return block.gather(ch, plan)

    def soft(
        self, w: ChoiceWeights, srcs: dict[int, SoftOut], flat: FlatFn, pair: PairFn
    ) -> SoftOut:
        """Soft-mask forward of this Choice from its inputs ``srcs``."""
        outs2d, supports2d = {}, {}
        if LINEAR in self.blocks:
            flats = {k: flat(k)[0] * w.conn[k] for k in self.candidates}
            outs2d[LINEAR], supports2d[LINEAR] = self.blocks[LINEAR].soft(flats, w.dims[LINEAR])
        x3 = r3 = None
        if any(b in self.blocks for b in ROW_BLOCKS):
            rows, support = self._soft_rows(w, srcs)
            if DOT_PRODUCT in self.blocks:
                y, s = self.blocks[DOT_PRODUCT].soft(rows, support, w.dims[DOT_PRODUCT])
                outs2d[DOT_PRODUCT], supports2d[DOT_PRODUCT] = y, s
            if EMBED_FC in self.blocks:
                y, mask = self.blocks[EMBED_FC].soft(rows, support, w.dims[EMBED_FC])
                x3, r3 = w.block[EMBED_FC].unsqueeze(-1) * y, w.block[EMBED_FC] * mask
        for b in PAIRWISE_BLOCKS:
            if b in self.blocks:
                outs2d[b], supports2d[b] = self._soft_pairwise(b, w, flat, pair)
        if not outs2d:
            return SoftOut(None, None, None, x3, r3)
        width = self.layout.source.width2d
        x2 = sum(w.block[b] * _pad(y, width) for b, y in outs2d.items())
        s2 = sum(w.block[b] * _pad(s, width) for b, s in supports2d.items()).clamp(max=1.0)
        p2 = sum(w.block[b] for b in outs2d).clamp(max=1.0)
        return SoftOut(x2, s2, p2, x3, r3)

    def _soft_rows(
        self, w: ChoiceWeights, srcs: dict[int, SoftOut]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """3-D adaptor under soft masks: ``(B, n_rows, D)`` and row support ``(b, n_rows)``."""
        rows, support = [], []
        for k in self.candidates:
            src, on = srcs[k], w.conn[k]
            if src.x2 is not None:
                weight = src.p2 * on
                rows.append((self.adaptor.project(k, src.x2) * weight).unsqueeze(1))
                support.append(weight)
            if src.x3 is not None:
                rows.append(src.x3 * on.unsqueeze(-1))
                support.append(src.r3 * on)
        return stack_rows(rows), _cat(support, 1)

    def _soft_pairwise(
        self, kind: str, w: ChoiceWeights, flat: FlatFn, pair: PairFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.blocks[kind]
        width = self.layout.pair_width
        z, support = 0, 0
        for b, j in enumerate(self.candidates):
            right, right_support = flat(j)
            mixed = 0
            for a, i in enumerate(self.candidates):
                projected = pair(i, j)
                if kind == PAIRWISE_SUM:  # FC_ij maps onto input j's positions only
                    projected = projected * right_support
                mixed = mixed + w.left[:, a : a + 1] * interact(kind, projected, right)
            z = z + w.right[:, b : b + 1] * _pad(mixed, width)
            support = support + w.right[:, b : b + 1] * _pad(right_support, width)
        support = (support * w.left.sum(-1, keepdim=True)).clamp(max=1.0)
        return masked_norm_act(z, support, block.ln_weight, block.ln_bias), support


class Supernet(nn.Module):
    """Weight-sharing supernet of a `SearchSpace`; see the module docstring for its modes."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.layout = SpaceLayout(space)
        d = space.embedding_dim
        self.embedding = FeatureEmbedding(space.spec, d) if space.spec.n_sparse else None
        self.choices = nn.ModuleList(
            SuperChoice(space, self.layout, c) for c in range(space.num_choices)
        )
        pairs = {}
        for sp in space.choices:
            if any(b in PAIRWISE_BLOCKS for b in sp.blocks):
                for i in sp.candidates:
                    for j in sp.candidates:
                        fan_in, fan_out = self.layout.sources[i].flat, self.layout.sources[j].flat
                        pairs[pair_key(i, j)] = SuperPairFC(fan_in, space.bottleneck, fan_out)
        self.pairs = nn.ModuleDict(pairs)
        last = self.layout.sources[choice_input(space.num_choices - 1)].flat
        self.classifier_weight = _uniform((1, last), last)
        self.classifier_bias = _uniform((1,), last)

    def forward(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        arch: Arch | None = None,
        soft: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``(B,)`` logits under ``arch``'s hard masks, ``soft`` weights, or the whole supernet."""
        if arch is not None and soft is not None:
            raise ValueError("pass either arch (hard masks) or soft (decision weights), not both")
        if arch is not None:
            return self._forward_hard(dense, sparse, arch)
        return self._forward_soft(dense, sparse, self.space.all_ones() if soft is None else soft)

    def _raw(
        self, dense: torch.Tensor, sparse: torch.Tensor, needed: frozenset[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Raw inputs present in the spec (and in ``needed``, when given)."""
        outs = {}
        if self.space.spec.n_dense:
            outs[DENSE] = dense
        if self.embedding is not None and (needed is None or SPARSE in needed):
            outs[SPARSE] = self.embedding(sparse)
        return outs

    # ---- hard masks ----------------------------------------------------------------------------

    def subnet_params(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The state dict of ``materialize(space, arch)`` sliced out of the supernet's weights."""
        arch = self.space.validate(arch)
        plan = HardPlan(self.space, self.layout, arch, self.classifier_weight.device)
        shapes = arch_shapes(self.space, arch)
        state = {}
        if SPARSE in arch.inputs_read():
            state["embedding.table.weight"] = self.embedding.table.weight
        for c in arch.reachable():
            ch = arch.choices[c]
            is3d = [shapes[k].is3d for k in ch.inputs]
            for name, t in self.choices[c].gather(ch, plan, is3d).items():
                state[f"choices.{c}.{name}"] = t
            if ch.block in PAIRWISE_BLOCKS:
                key = pair_key(ch.left, ch.right)
                fc = self.pairs[key].gather(plan.spans[ch.left], plan.spans[ch.right])
                state.update({f"pairs.{key}.{name}": t for name, t in fc.items()})
        for name, t in self._classifier_params(arch, plan).items():
            state[f"classifier.{name}"] = t
        return state

    def _classifier_params(self, arch: Arch, plan: HardPlan) -> dict[str, torch.Tensor]:
        span = plan.spans[choice_input(len(arch.choices) - 1)]
        return {"weight": span.take(self.classifier_weight, 1), "bias": self.classifier_bias}

    def _forward_hard(self, dense: torch.Tensor, sparse: torch.Tensor, arch: Arch) -> torch.Tensor:
        arch = self.space.validate(arch)
        plan = HardPlan(self.space, self.layout, arch, self.classifier_weight.device)
        outs = self._raw(dense, sparse, arch.inputs_read())
        projected: dict[str, torch.Tensor] = {}
        for c in arch.reachable():
            ch = arch.choices[c]
            is3d = [outs[k].dim() == 3 for k in ch.inputs]
            params = self.choices[c].gather(ch, plan, is3d)
            if ch.block == LINEAR:
                out = run_linear(params, [outs[k] for k in ch.inputs])
            elif ch.block in ROW_BLOCKS:
                out = run_rows(ch.block, params, [outs[k] for k in ch.inputs])
            else:
                key = pair_key(ch.left, ch.right)
                if key not in projected:
                    fc = self.pairs[key].gather(plan.spans[ch.left], plan.spans[ch.right])
                    projected[key] = run_pair_fc(fc, outs[ch.left])
                out = run_pairwise(ch.block, params, projected[key], outs[ch.right])
            outs[choice_input(c)] = out
        last = outs[choice_input(len(arch.choices) - 1)]
        return run_classifier(self._classifier_params(arch, plan), last)

    # ---- soft masks ----------------------------------------------------------------------------

    def _choice_weights(self, weights: list[torch.Tensor], c: int) -> ChoiceWeights:
        sp, idx = self.space.choices[c], self.space.choice_decisions[c]
        block = weights[idx.block]
        conn = {}
        if idx.conns:
            conn = {
                k: p.unsqueeze(-1) for k, p in connection_weights(self.space, weights, c).items()
            }
        return ChoiceWeights(
            block={b: block[:, i : i + 1] for i, b in enumerate(sp.blocks)},
            conn=conn,
            dims={b: weights[j] for b, j in idx.dims.items()},
            left=None if idx.left is None else weights[idx.left],
            right=None if idx.right is None else weights[idx.right],
        )

    def _forward_soft(
        self, dense: torch.Tensor, sparse: torch.Tensor, soft: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        ref = self.classifier_weight
        weights = [
            (w if w.dim() == 2 else w.unsqueeze(0)).to(device=ref.device, dtype=ref.dtype)
            for w in self.space.check_weights(soft, batched=True)
        ]
        d = self.space.embedding_dim
        one = ref.new_ones(1, 1)
        srcs: dict[int, SoftOut] = {}
        for k, x in self._raw(dense, sparse).items():
            if x.dim() == 2:
                srcs[k] = SoftOut(x, one.expand(1, x.shape[1]), one, None, None)
            else:
                srcs[k] = SoftOut(None, None, None, x, one.expand(1, x.shape[1]))
        flats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        projected: dict[tuple[int, int], torch.Tensor] = {}

        def flat(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            if k not in flats:
                src, width = srcs[k], self.layout.sources[k].flat
                parts, supports = [], []
                if src.x2 is not None:
                    parts.append(_pad(src.x2, width))
                    supports.append(_pad(src.s2, width))
                if src.x3 is not None:
                    parts.append(_pad(src.x3.flatten(1), width))
                    supports.append(_pad(src.r3.repeat_interleave(d, dim=1), width))
                flats[k] = (sum(parts), sum(supports).clamp(max=1.0))
            return flats[k]

        def pair(i: int, j: int) -> torch.Tensor:
            if (i, j) not in projected:
                projected[(i, j)] = self.pairs[pair_key(i, j)].soft(flat(i)[0])
            return projected[(i, j)]

        for c, module in enumerate(self.choices):
            srcs[choice_input(c)] = module.soft(self._choice_weights(weights, c), srcs, flat, pair)
        last, _ = flat(choice_input(self.space.num_choices - 1))
        return F.linear(last, self.classifier_weight, self.classifier_bias).squeeze(-1)
