"""Tensor shapes: of one architecture's inputs, and the supernet's largest (max) layouts.

Every Choice output has a *flat view* (what linear and pairwise blocks read): its 2-D output,
or its flattened 3-D output, zero-padded to ``flat = max(width2d, rows3d * D)``. In a subnet
only one of the two exists; the whole supernet sums them, extending the paper's output
aggregator (zero-pad and sum) so that widths stay bounded along chains of pairwise blocks.
The *row view* (what EmbedFC and dot product read) has a slot for the 2-D output projected
to one row, followed by ``rows3d`` slots for the 3-D output.

The same layout classes describe one architecture exactly (`SpaceLayout.of_arch`): its
materialised subnet is built of the supernet's block modules at those sizes, and `HardPlan`
then gives spans that cover whole tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rankitect.space.arch import DENSE, SPARSE, Arch, ChoiceArch, choice_input
from rankitect.space.blocks import (
    BLOCKS_2D,
    DIM_BLOCKS,
    DOT,
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    Span,
    dot_rows,
)
from rankitect.space.space import ChoiceSpec

if TYPE_CHECKING:
    from rankitect.data.spec import FeatureSpec
    from rankitect.space.space import SearchSpace


@dataclass(frozen=True)
class Shape:
    """An input's output in one architecture: 2-D of ``size`` features, or 3-D of ``size`` rows."""

    size: int
    is3d: bool

    def flat(self, dim: int) -> int:
        return self.size * dim if self.is3d else self.size

    @property
    def rows(self) -> int:
        """Rows it contributes to the 3-D adaptor (a 2-D output is projected to one row)."""
        return self.size if self.is3d else 1


def arch_shapes(space: SearchSpace, arch: Arch) -> dict[int, Shape]:
    """Output shape of every input (raw and Choice) of ``arch``, keyed by global index."""
    shapes = {}
    if space.spec.n_dense:
        shapes[DENSE] = Shape(space.spec.n_dense, False)
    if space.spec.n_sparse:
        shapes[SPARSE] = Shape(space.spec.n_sparse, True)
    d = space.embedding_dim
    for c, ch in enumerate(arch.choices):
        if ch.block == LINEAR:
            shape = Shape(ch.dim, False)
        elif ch.block == EMBED_FC:
            shape = Shape(ch.dim, True)
        elif ch.block == DOT_PRODUCT:
            shape = Shape(ch.dim * sum(shapes[k].rows for k in ch.inputs), False)
        elif ch.block == DOT:
            n = sum(dot_rows(shapes[k].flat(d), d) for k in ch.inputs)
            shape = Shape(n * (n - 1) // 2, False)
        else:
            shape = Shape(shapes[ch.right].flat(d), False)
        shapes[choice_input(c)] = shape
    return shapes


@dataclass(frozen=True)
class SourceLayout:
    """Largest layout of one input's output."""

    width2d: int  # 0 when it never has a 2-D output
    rows3d: int  # 0 when it never has a 3-D output
    flat: int

    @property
    def has2d(self) -> bool:
        return self.width2d > 0

    @property
    def row_slots(self) -> int:
        return int(self.has2d) + self.rows3d


@dataclass(frozen=True)
class ChoiceLayout:
    """Largest widths inside one Choice.

    ``row_offsets[k]``: first row slot of candidate ``k`` in the 3-D adaptor; ``n_rows``: all
    slots; ``pair_width``: width of pairwise outputs (widest candidate flat view);
    ``dot_dim``: the largest dot-product dimension (0 without that block); ``dot_rows[k]``:
    the rows of D the dot block reads candidate k's largest flat view as.
    """

    row_offsets: dict[int, int]
    n_rows: int
    pair_width: int
    dot_dim: int
    dot_rows: dict[int, int]
    source: SourceLayout


class SpaceLayout:
    """Max layouts of the raw inputs and of the Choices in ``choices`` (index -> spec)."""

    def __init__(
        self, spec: FeatureSpec, embedding_dim: int, choices: Mapping[int, ChoiceSpec]
    ) -> None:
        d = embedding_dim
        self.sources: dict[int, SourceLayout] = {}
        if spec.n_dense:
            n = spec.n_dense
            self.sources[DENSE] = SourceLayout(n, 0, n)
        if spec.n_sparse:
            n = spec.n_sparse
            self.sources[SPARSE] = SourceLayout(0, n, n * d)
        self.choices: dict[int, ChoiceLayout] = {}
        for c in sorted(choices):
            sp = choices[c]
            offsets, n_rows = {}, 0
            for k in sp.candidates:
                offsets[k] = n_rows
                n_rows += self.sources[k].row_slots
            pair_width = max(self.sources[k].flat for k in sp.candidates)
            dot_dim = sp.dims.get(DOT_PRODUCT, (0,))[-1]
            rows = {k: dot_rows(self.sources[k].flat, d) for k in sp.candidates}
            n_dot = sum(rows.values())
            widths = {
                LINEAR: sp.dims.get(LINEAR, (0,))[-1],
                DOT_PRODUCT: n_rows * dot_dim,
                DOT: n_dot * (n_dot - 1) // 2,
                **{b: pair_width for b in PAIRWISE_BLOCKS},
            }
            width2d = max((widths[b] for b in sp.blocks if b in BLOCKS_2D), default=0)
            rows3d = sp.dims[EMBED_FC][-1] if EMBED_FC in sp.blocks else 0
            source = SourceLayout(width2d, rows3d, max(width2d, rows3d * d))
            self.sources[choice_input(c)] = source
            self.choices[c] = ChoiceLayout(offsets, n_rows, pair_width, dot_dim, rows, source)

    @classmethod
    def of_space(cls, space: SearchSpace) -> SpaceLayout:
        return cls(space.spec, space.embedding_dim, dict(enumerate(space.choices)))

    @classmethod
    def of_arch(cls, space: SearchSpace, arch: Arch) -> SpaceLayout:
        """The exact layout of ``arch``'s reachable Choices (what its subnet allocates)."""
        return cls(
            space.spec,
            space.embedding_dim,
            {c: point_spec(arch.choices[c]) for c in arch.reachable()},
        )


def point_spec(ch: ChoiceArch) -> ChoiceSpec:
    """The one-setting Choice of ``ch``: its block, its inputs (a pairwise block's right input,
    whose width is its output's), its dim."""
    if ch.block in PAIRWISE_BLOCKS:
        return ChoiceSpec(blocks=(ch.block,), candidates=(ch.right,))
    dims = {ch.block: (ch.dim,)} if ch.block in DIM_BLOCKS else {}
    return ChoiceSpec(blocks=(ch.block,), candidates=ch.inputs, dims=dims)


def _contiguous(index: torch.Tensor) -> Span:
    """A span for ``index``: a plain range when the positions are consecutive."""
    n = index.numel()
    if n and int(index[-1]) - int(index[0]) == n - 1 and bool((index.diff() == 1).all()):
        return Span(n, int(index[0]))
    return Span(n, index=index)


def _dot_span(cl: ChoiceLayout, widths: list[tuple[int, int]], d: int, device) -> Span:
    """Where the dots of an architecture's rows sit among those of all the layout's rows:
    each input's rows are the leading ones of its largest (the inputs are aligned)."""
    starts, n = {}, 0
    for k, r in cl.dot_rows.items():
        starts[k], n = n, n + r
    rows = torch.cat([torch.arange(dot_rows(w, d)) + starts[k] for k, w in widths])
    i, j = torch.triu_indices(len(rows), len(rows), 1)
    a, b = rows[i], rows[j]
    span = _contiguous(a * n - a * (a + 1) // 2 + b - a - 1)  # row-major strict upper triangle
    if span.index is not None and device is not None:
        span = Span(span.size, index=span.index.to(device))
    return span


class HardPlan:
    """Index bookkeeping of one architecture in a layout.

    ``spans[k]``: positions of input k's flat view; ``row_slots[c]``: for a row-block Choice,
    per input the slots (inside that input's own row block) its rows take; ``dot_spans[c]``:
    positions of a dot product's ``rows x dim`` outputs.
    """

    def __init__(self, space: SearchSpace, layout: SpaceLayout, arch: Arch, device=None):
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
            elif ch.block == DOT:
                span = _dot_span(cl, [(k, shapes[k].flat(d)) for k in ch.inputs], d, device)
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
                    index = (torch.cat(rows)[:, None] * cl.dot_dim + torch.arange(ch.dim)).flatten()
                    span = _contiguous(index)
                    if span.index is not None and device is not None:
                        span = Span(span.size, index=span.index.to(device))
                    self.dot_spans[c] = span
            self.spans[choice_input(c)] = span
