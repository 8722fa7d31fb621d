"""Tensor shapes: of one architecture's inputs, and the supernet's largest (max) layouts.

Every Choice output has a *flat view* (what linear and pairwise blocks read): its 2-D output,
or its flattened 3-D output, zero-padded to ``flat = max(width2d, rows3d * D)``. In a subnet
only one of the two exists; the whole supernet sums them, extending the paper's output
aggregator (zero-pad and sum) so that widths stay bounded along chains of pairwise blocks.
The *row view* (what EmbedFC and dot product read) has a slot for the 2-D output projected
to one row, followed by ``rows3d`` slots for the 3-D output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rankitect.space.arch import DENSE, SPARSE, Arch, choice_input
from rankitect.space.blocks import (
    BLOCKS_2D,
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
)

if TYPE_CHECKING:
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
        else:
            shape = Shape(shapes[ch.right].flat(d), False)
        shapes[choice_input(c)] = shape
    return shapes


@dataclass(frozen=True)
class SourceLayout:
    """Largest layout of one input's output in the supernet."""

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
    """Largest widths inside one Choice of the supernet.

    ``row_offsets[k]``: first row slot of candidate ``k`` in the 3-D adaptor; ``n_rows``: all
    slots; ``pair_width``: width of pairwise outputs (widest candidate flat view).
    """

    row_offsets: dict[int, int]
    n_rows: int
    pair_width: int
    source: SourceLayout


class SpaceLayout:
    """Max layouts of every input and Choice of a space (what the supernet allocates)."""

    def __init__(self, space: SearchSpace) -> None:
        d = space.embedding_dim
        self.sources: dict[int, SourceLayout] = {}
        if space.spec.n_dense:
            n = space.spec.n_dense
            self.sources[DENSE] = SourceLayout(n, 0, n)
        if space.spec.n_sparse:
            n = space.spec.n_sparse
            self.sources[SPARSE] = SourceLayout(0, n, n * d)
        self.choices: list[ChoiceLayout] = []
        for c, sp in enumerate(space.choices):
            offsets, n_rows = {}, 0
            for k in sp.candidates:
                offsets[k] = n_rows
                n_rows += self.sources[k].row_slots
            pair_width = max(self.sources[k].flat for k in sp.candidates)
            widths = {
                LINEAR: sp.dims.get(LINEAR, (0,))[-1],
                DOT_PRODUCT: n_rows * sp.dims.get(DOT_PRODUCT, (0,))[-1],
                **{b: pair_width for b in PAIRWISE_BLOCKS},
            }
            width2d = max((widths[b] for b in sp.blocks if b in BLOCKS_2D), default=0)
            rows3d = sp.dims[EMBED_FC][-1] if EMBED_FC in sp.blocks else 0
            source = SourceLayout(width2d, rows3d, max(width2d, rows3d * d))
            self.sources[choice_input(c)] = source
            self.choices.append(ChoiceLayout(offsets, n_rows, pair_width, source))
