"""The weight-sharing supernet: every block of every Choice at its largest dimension.

Three ways to run it (`Supernet.forward`):

- ``arch=``: hard masks of one architecture. Only reachable Choices, their chosen block and
  connections run, on weights sliced to the chosen widths (the paper's dynamic execution of
  partial operators); norms normalise the active features only, so the result equals the
  materialised subnet's, which is built of the same block modules (`ChoiceNet`).
- ``soft=``: one weight vector per decision (probabilities for DNAS). Blocks are mixed by
  their block weights, inputs scaled by their connection probability, dimensions by the
  expected prefix mask (reverse cumulative sum of the dimension probabilities), pairs by
  ``left_i * right_j``. Every tensor carries a *support* (how present each position is),
  and the norms are weighted by it, so one-hot weights give exactly the hard-mask result.
  Differentiable in the weights.
- neither: the whole supernet (every block, connection and pair on, full dimensions).

Under BatchNorm the supernet evaluates with batch statistics (``batch_stats_in_eval``): the
running statistics of a shared feature mix every subnet that trained it. A materialised subnet
inherits them all the same, as the best estimate there is, and evaluates with its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rankitect.models.embedding import FeatureEmbedding
from rankitect.space.arch import DENSE, SPARSE, Arch, ChoiceArch, choice_input
from rankitect.space.blocks import (
    DOT,
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    PAIRWISE_SUM,
    ROW_BLOCKS,
    BlockNorm,
    Classifier,
    DotBlock,
    LayerSettings,
    LinearBlock,
    PairFC,
    PairwiseBlock,
    RowAdaptor,
    RowBlock,
    cat,
    interact,
    pad,
    prefixed,
    stack_rows,
)
from rankitect.space.cost import connection_weights
from rankitect.space.layout import ChoiceLayout, HardPlan, SourceLayout, SpaceLayout, arch_shapes
from rankitect.space.space import ChoiceSpec, SearchSpace


def pair_key(left: int, right: int) -> str:
    return f"{left}_{right}"


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


# ---- one Choice: its allowed blocks, built once for the supernet and the subnet -------------


class SuperChoice(nn.Module):
    """The allowed blocks of one Choice, with their adaptors, at the layout ``cl``.

    The supernet builds one per Choice of the space; a materialised subnet builds one per
    reachable Choice holding just its block (`rankitect.space.layout.point_spec`).
    """

    def __init__(
        self,
        sp: ChoiceSpec,
        cl: ChoiceLayout,
        sources: Mapping[int, SourceLayout],
        embedding_dim: int,
        settings: LayerSettings,
    ) -> None:
        super().__init__()
        d = embedding_dim
        self.layout, self.candidates = cl, sp.candidates
        srcs = {k: sources[k] for k in sp.candidates}
        self.blocks = nn.ModuleDict()
        if LINEAR in sp.blocks:
            fan_ins = {k: s.flat for k, s in srcs.items()}
            self.blocks[LINEAR] = LinearBlock(fan_ins, sp.dims[LINEAR], settings)
        if any(b in ROW_BLOCKS for b in sp.blocks):
            widths = {k: s.width2d for k, s in srcs.items() if s.has2d}
            self.adaptor = RowAdaptor(widths, d, settings.init)
            slots = {k: s.row_slots for k, s in srcs.items()}
            for b in ROW_BLOCKS:
                if b in sp.blocks:
                    self.blocks[b] = RowBlock(b, slots, sp.dims[b], d, settings)
        for b in PAIRWISE_BLOCKS:
            if b in sp.blocks:
                self.blocks[b] = PairwiseBlock(b, cl.pair_width, settings)
        if DOT in sp.blocks:
            self.blocks[DOT] = DotBlock(cl.dot_rows, d)

    def sliced(self, c: int, ch: ChoiceArch, plan: HardPlan, is3d: Mapping[int, bool]):
        """This Choice's state under ``ch``, named as in the subnet's `SuperChoice`."""
        block = self.blocks[ch.block]
        if ch.block == LINEAR:
            own = block.sliced(ch.inputs, ch.dim, plan.spans)
        elif ch.block in PAIRWISE_BLOCKS:
            own = block.sliced(plan.spans[ch.right])
        elif ch.block == DOT:
            own = block.sliced()
        else:
            own = block.sliced(ch.inputs, ch.dim, plan.row_slots[c], plan.dot_spans.get(c))
        state = prefixed(f"blocks.{ch.block}", own)
        if ch.block in ROW_BLOCKS:
            for k in ch.inputs:
                if not is3d[k]:
                    state.update(prefixed("adaptor", self.adaptor.sliced(k, plan.spans[k])))
        return state

    def hard(
        self,
        c: int,
        ch: ChoiceArch,
        plan: HardPlan,
        outs: Mapping[int, torch.Tensor],
        project: Callable[[int, int], torch.Tensor],
    ) -> torch.Tensor:
        """This Choice's output under ``ch`` (the one dispatch over block kinds)."""
        block = self.blocks[ch.block]
        if ch.block == LINEAR:
            return block.hard(ch.inputs, ch.dim, plan.spans, [outs[k] for k in ch.inputs])
        if ch.block in PAIRWISE_BLOCKS:
            return block.hard(project(ch.left, ch.right), outs[ch.right], plan.spans[ch.right])
        if ch.block == DOT:
            return block.hard([outs[k] for k in ch.inputs])
        rows = [
            outs[k]
            if outs[k].dim() == 3
            else self.adaptor.project(k, outs[k], plan.spans[k]).unsqueeze(1)
            for k in ch.inputs
        ]
        return block.hard(
            ch.inputs, ch.dim, plan.row_slots[c], plan.dot_spans.get(c), stack_rows(rows)
        )

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
        if DOT in self.blocks:
            flats = {k: tuple(t * w.conn[k] for t in flat(k)) for k in self.candidates}
            outs2d[DOT], supports2d[DOT] = self.blocks[DOT].soft(flats)
        if not outs2d:
            return SoftOut(None, None, None, x3, r3)
        width = self.layout.source.width2d
        x2 = sum(w.block[b] * pad(y, width) for b, y in outs2d.items())
        s2 = sum(w.block[b] * pad(s, width) for b, s in supports2d.items()).clamp(max=1.0)
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
        return stack_rows(rows), cat(support, 1)

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
            z = z + w.right[:, b : b + 1] * pad(mixed, width)
            support = support + w.right[:, b : b + 1] * pad(right_support, width)
        support = (support * w.left.sum(-1, keepdim=True)).clamp(max=1.0)
        return block.soft(z, support), support


# ---- the graph over the Choices, shared by the supernet and the subnet -----------------------


class ChoiceNet(nn.Module):
    """Embedding, Choices, shared pairwise projections and classifier of a Choice space, and
    the one forward of an architecture over them (`run_hard`)."""

    space: SearchSpace
    settings: LayerSettings
    embedding: FeatureEmbedding | None
    pairs: nn.ModuleDict
    classifier: Classifier
    # set by `rankitect.system.enable_activation_checkpointing`
    activation_checkpointing: bool = False

    def choice(self, c: int) -> SuperChoice:
        raise NotImplementedError

    def dropout(self, c: int) -> float:
        """Dropout on Choice ``c``'s output: its own, else the settings'."""
        own = self.space.choices[c].dropout
        return self.settings.dropout if own is None else own

    @property
    def emb_l2(self) -> float:
        return self.settings.emb_l2

    def regularization_loss(self) -> torch.Tensor:
        """The space's embedding regulariser ``emb_l2 / 2 * ||E||^2`` over the whole table."""
        if self.embedding is None or not self.emb_l2:
            return self.classifier.weight.new_zeros(())
        return 0.5 * self.emb_l2 * self.embedding.table.weight.pow(2).sum()

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

    def run_hard(
        self, dense: torch.Tensor, sparse: torch.Tensor, arch: Arch, plan: HardPlan
    ) -> torch.Tensor:
        """``(B,)`` logits of ``arch``: its reachable Choices in order, dropout on each output,
        each shared ``FC_ij`` computed once."""
        outs = self._raw(dense, sparse, arch.inputs_read())
        projected: dict[str, torch.Tensor] = {}

        def project(i: int, j: int) -> torch.Tensor:
            key = pair_key(i, j)
            if key not in projected:
                projected[key] = self.pairs[key].hard(outs[i], plan.spans[i], plan.spans[j])
            return projected[key]

        for c in arch.reachable():
            ch, hard = arch.choices[c], self.choice(c).hard
            if self.activation_checkpointing and torch.is_grad_enabled():
                # Recompute each Choice in the backward pass instead of keeping its
                # activations; its pair projection is computed (and cached) outside, else
                # the recomputation would find it cached and save fewer tensors.
                if ch.block in PAIRWISE_BLOCKS:
                    project(ch.left, ch.right)
                out = checkpoint(hard, c, ch, plan, outs, project, use_reentrant=False)
            else:
                out = hard(c, ch, plan, outs, project)
            p = self.dropout(c)
            outs[choice_input(c)] = F.dropout(out, p, self.training) if p else out
        last = choice_input(len(arch.choices) - 1)
        return self.classifier.hard(outs[last], plan.spans[last])


# ---- the supernet ------------------------------------------------------------------------------


class Supernet(ChoiceNet):
    """Weight-sharing supernet of a `SearchSpace`; see the module docstring for its modes."""

    PLAN_CACHE = 1024  # hard-mask plans kept per supernet (one per recently seen architecture)

    def __init__(self, space: SearchSpace, batch_stats_in_eval: bool = True) -> None:
        super().__init__()
        self.space, self.settings = space, space.layer
        self.layout = SpaceLayout.of_space(space)
        d = space.embedding_dim
        init = self.settings.init
        self.embedding = (
            FeatureEmbedding(space.spec, d, self.settings.emb_init_std)
            if space.spec.n_sparse
            else None
        )
        self.choices = nn.ModuleList(
            SuperChoice(sp, self.layout.choices[c], self.layout.sources, d, self.settings)
            for c, sp in enumerate(space.choices)
        )
        pairs = {}
        for sp in space.choices:
            if any(b in PAIRWISE_BLOCKS for b in sp.blocks):
                for i in sp.candidates:
                    for j in sp.candidates:
                        fan_in, fan_out = self.layout.sources[i].flat, self.layout.sources[j].flat
                        pairs[pair_key(i, j)] = PairFC(fan_in, space.bottleneck, fan_out, init)
        self.pairs = nn.ModuleDict(pairs)
        last = self.layout.sources[choice_input(space.num_choices - 1)].flat
        self.classifier = Classifier(last, init)
        self.batch_stats_in_eval = batch_stats_in_eval
        self._plans: dict[tuple[Arch, str], HardPlan] = {}

    @property
    def batch_stats_in_eval(self) -> bool:
        return self._batch_stats_in_eval

    @batch_stats_in_eval.setter
    def batch_stats_in_eval(self, value: bool) -> None:
        self._batch_stats_in_eval = bool(value)
        for m in self.modules():
            if isinstance(m, BlockNorm):
                m.batch_stats_in_eval = self._batch_stats_in_eval

    def choice(self, c: int) -> SuperChoice:
        return self.choices[c]

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
            return self.run_hard(dense, sparse, arch, self.plan(arch))
        return self._forward_soft(dense, sparse, self.space.all_ones() if soft is None else soft)

    # ---- hard masks ----------------------------------------------------------------------------

    def plan(self, arch: Arch) -> HardPlan:
        """The (cached) index plan of ``arch`` in this supernet's layout."""
        device = self.classifier.weight.device
        key = (arch, str(device))
        if key not in self._plans:
            if len(self._plans) >= self.PLAN_CACHE:
                self._plans.clear()
            self._plans[key] = HardPlan(self.space, self.layout, self.space.validate(arch), device)
        return self._plans[key]

    def subnet_params(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The state dict of ``materialize(space, arch)`` sliced out of the supernet's weights
        and running statistics."""
        plan = self.plan(arch)
        is3d = {k: s.is3d for k, s in arch_shapes(self.space, arch).items()}
        state = {}
        if SPARSE in arch.inputs_read():
            state["embedding.table.weight"] = self.embedding.table.weight
        for c in arch.reachable():
            ch = arch.choices[c]
            for name, t in self.choices[c].sliced(c, ch, plan, is3d).items():
                state[f"choices.{c}.{name}"] = t
            if ch.block in PAIRWISE_BLOCKS:
                key = pair_key(ch.left, ch.right)
                fc = self.pairs[key].sliced(plan.spans[ch.left], plan.spans[ch.right])
                state.update({f"pairs.{key}.{name}": t for name, t in fc.items()})
        last = plan.spans[choice_input(len(arch.choices) - 1)]
        state.update(prefixed("classifier", self.classifier.sliced(last)))
        return state

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
        ref = self.classifier.weight
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
                    parts.append(pad(src.x2, width))
                    supports.append(pad(src.s2, width))
                if src.x3 is not None:
                    parts.append(pad(src.x3.flatten(1), width))
                    supports.append(pad(src.r3.repeat_interleave(d, dim=1), width))
                flats[k] = (sum(parts), sum(supports).clamp(max=1.0))
            return flats[k]

        def pair(i: int, j: int) -> torch.Tensor:
            if (i, j) not in projected:
                projected[(i, j)] = self.pairs[pair_key(i, j)].soft(flat(i)[0])
            return projected[(i, j)]

        for c, module in enumerate(self.choices):
            out = module.soft(self._choice_weights(weights, c), srcs, flat, pair)
            srcs[choice_input(c)] = self._drop_soft(out, self.dropout(c))
        last, _ = flat(choice_input(self.space.num_choices - 1))
        return self.classifier.hard(last)

    def _drop_soft(self, out: SoftOut, p: float) -> SoftOut:
        if not (self.training and p):
            return out
        x2 = None if out.x2 is None else F.dropout(out.x2, p, True)
        x3 = None if out.x3 is None else F.dropout(out.x3, p, True)
        return SoftOut(x2, out.s2, out.p2, x3, out.r3)
