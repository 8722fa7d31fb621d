"""Analytic FLOPs and parameters of architectures, exact and in expectation.

FLOPs count what ``torch.utils.flop_counter.FlopCounterMode`` counts on the materialised
model, per example: ``2 * M * N * K`` per matmul (linear, EmbedFC, bmm); bias adds,
elementwise ops, normalisation and embedding lookups count zero. Parameters are the dense
parameters (everything but the embedding table, which `SearchSpace.embedding_params` counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rankitect.space.arch import DENSE, SPARSE, Arch, choice_input
from rankitect.space.blocks import (
    CONNECTION_BLOCKS,
    DOT,
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    ROW_BLOCKS,
    dot_rows,
)
from rankitect.space.layout import arch_shapes

if TYPE_CHECKING:
    from rankitect.space.space import SearchSpace


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int


def arch_cost(space: SearchSpace, arch: Arch) -> Cost:
    """Exact per-example FLOPs and dense parameters of the materialised ``arch``.

    Only Choices reachable from the classifier are built; a pairwise projection ``FC_ij`` used
    by several Choices is built and computed once.
    """
    shapes = arch_shapes(space, arch)
    d, bn = space.embedding_dim, space.bottleneck
    norm = space.layer.norm

    def norm_params(width: int) -> int:  # an affine weight and bias per normalised feature
        return 0 if norm == "none" else 2 * width

    flops = params = 0
    pairs = set()
    for c in arch.reachable():
        ch = arch.choices[c]
        if ch.block == LINEAR:
            fan_in = sum(shapes[k].flat(d) for k in ch.inputs)
            flops += 2 * fan_in * ch.dim
            params += fan_in * ch.dim + ch.dim + norm_params(ch.dim)
        elif ch.block == DOT:  # the whole Gram matrix of its rows, no parameters
            rows = sum(dot_rows(shapes[k].flat(d), d) for k in ch.inputs)
            flops += 2 * rows * rows * d
        elif ch.block in ROW_BLOCKS:
            rows = sum(shapes[k].rows for k in ch.inputs)
            for k in ch.inputs:
                if not shapes[k].is3d:  # 2-D input projected to one row of width D
                    flops += 2 * shapes[k].size * d
                    params += shapes[k].size * d + d
            params += rows * ch.dim + ch.dim
            if ch.block == EMBED_FC:  # LayerNorm per row (over D), BatchNorm per feature
                flops += 2 * rows * ch.dim * d
                params += norm_params(d if norm == "layer" else ch.dim * d)
            else:  # EmbedFC inside, then the bmm of (rows x D) by (D x dim)
                flops += 4 * rows * ch.dim * d
                params += norm_params(rows * ch.dim)
        else:
            params += norm_params(shapes[choice_input(c)].size)
            pairs.add((ch.left, ch.right))
    for i, j in pairs:
        wi, wj = shapes[i].flat(d), shapes[j].flat(d)
        flops += 2 * (wi * bn + bn * wj)
        params += wi * bn + bn + bn * wj + wj
    last = shapes[choice_input(len(arch.choices) - 1)].flat(d)
    return Cost(flops=flops + 2 * last, params=params + last + 1)


def connection_weights(
    space: SearchSpace, weights: Sequence[torch.Tensor], c: int
) -> dict[int, torch.Tensor]:
    """Probability that Choice ``c`` (if it picks a connection block) reads each candidate.

    The default input d is also read when every connection is off: ``p_d + prod_k (1 - p_k)``;
    for the dot block also when one other input alone is on (`ChoiceSpec.inputs_read`).
    Works on ``(..., 2)`` weights; returns ``(...)`` tensors.
    """
    sp, idx = space.choices[c], space.choice_decisions[c]
    on = dict(zip(sp.candidates, (weights[j][..., 1] for j in idx.conns), strict=True))
    d = sp.default_input
    out = dict(on)
    out[d] = on[d] + (1 - on[d]) * _at_most(on, (d,), 1 if DOT in sp.blocks else 0)
    return out


def _at_most(on: dict[int, torch.Tensor], but: Sequence[int], n: int) -> torch.Tensor:
    """Probability that at most ``n`` (0 or 1) of the independent inputs ``on``, ``but``
    those, are on."""
    off = [1 - p for k, p in on.items() if k not in but]
    none = _product(off, next(iter(on.values())))
    if n == 0:
        return none
    return none + sum((1 - q) * _product(off[:i] + off[i + 1 :], q) for i, q in enumerate(off))


def _product(ts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(ts).prod(0) if ts else torch.ones_like(like)


def _raw_rows(space: SearchSpace) -> dict[int, int]:
    d, out = space.embedding_dim, {}
    if space.spec.n_dense:
        out[DENSE] = dot_rows(space.spec.n_dense, d)
    if space.spec.n_sparse:
        out[SPARSE] = space.spec.n_sparse
    return out


def _choice_rows(
    space: SearchSpace,
    probs: Sequence[torch.Tensor],
    c: int,
    moments: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row moments of an aligned Choice's output: a mixture over its blocks of a linear
    output's ``ceil(dim / D)`` rows, EmbedFC's ``dim`` rows and a pairwise block's right
    input's rows."""
    sp, idx = space.choices[c], space.choice_decisions[c]
    d = space.embedding_dim
    mean = square = probs[idx.block].new_zeros(())
    for p_block, b in zip(probs[idx.block], sp.blocks, strict=True):
        if b in PAIRWISE_BLOCKS:
            right = probs[idx.right]
            mean = mean + p_block * sum(
                r * moments[k][0] for k, r in zip(sp.candidates, right, strict=True)
            )
            square = square + p_block * sum(
                r * moments[k][1] for k, r in zip(sp.candidates, right, strict=True)
            )
            continue
        rows = probs[idx.dims[b]].new_tensor(
            [dot_rows(m, d) if b == LINEAR else m for m in sp.dims[b]]
        )
        mean = mean + p_block * (probs[idx.dims[b]] * rows).sum()
        square = square + p_block * (probs[idx.dims[b]] * rows * rows).sum()
    return mean, square


def _dot_rows_squared(
    space: SearchSpace,
    weights: Sequence[torch.Tensor],
    c: int,
    moments: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[F]`` and ``E[F^2]`` for the rows F the dot block of Choice ``c`` reads, from each
    input's row moments ``(E[R], E[R^2])``. Two inputs read together use their joint read
    probability; their row counts are taken as independent (exact when they share no
    decisions, and for one-hot weights)."""
    sp, idx = space.choices[c], space.choice_decisions[c]
    on = dict(zip(sp.candidates, (weights[j][..., 1] for j in idx.conns), strict=True))
    read = connection_weights(space, weights, c)
    d = sp.default_input
    mean = sum(read[k] * moments[k][0] for k in sp.candidates)
    square = sum(read[k] * moments[k][1] for k in sp.candidates)
    for k in sp.candidates:
        for j in sp.candidates:
            if j == k:
                continue
            if d in (j, k):  # the other on, and d on or every third input off
                other = j if k == d else k
                both = on[other] * (on[d] + (1 - on[d]) * _at_most(on, (d, other), 0))
            else:
                both = on[k] * on[j]
            square = square + both * moments[k][0] * moments[j][0]
    return mean, square


def expected_flops(space: SearchSpace, probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Expected per-example FLOPs when every decision is drawn independently from ``probs``.

    ``probs``: one probability vector ``(cardinality,)`` per decision, in decision order.
    Widths are propagated as expectations through the DAG, which is exact because FLOPs are
    multilinear in independent decisions (each product pairs a Choice's own decisions with
    its inputs' widths). Two terms are OR-events and use an independence approximation
    (exact for one-hot probabilities and when the events are in fact independent, e.g. a
    chain of Choices): whether a Choice is reachable from the classifier, and whether a shared
    pairwise projection ``FC_ij`` is used by at least one reachable Choice. The dot block's
    FLOPs are quadratic in its rows: they use each aligned input's first two moments of its
    rows, with independent row counts across inputs (`_dot_rows_squared`).
    """
    probs = space.check_weights(probs, batched=False)
    d, bn = space.embedding_dim, space.bottleneck
    zero = probs[0].new_zeros(())
    # per input: P(2-D), E[2-D width; 2-D], E[rows; 3-D]
    p2: dict[int, torch.Tensor] = {}
    e2: dict[int, torch.Tensor] = {}
    e3: dict[int, torch.Tensor] = {}
    if space.spec.n_dense:
        p2[DENSE], e2[DENSE], e3[DENSE] = zero + 1, zero + space.spec.n_dense, zero
    if space.spec.n_sparse:
        p2[SPARSE], e2[SPARSE], e3[SPARSE] = zero, zero, zero + space.spec.n_sparse
    # per aligned input: (E[R], E[R^2]) of the rows R the dot block reads it as
    moments = {k: (zero + r, zero + r * r) for k, r in _raw_rows(space).items()}

    def e_flat(k: int) -> torch.Tensor:
        return e2[k] + d * e3[k]

    def e_rows(k: int) -> torch.Tensor:
        return p2[k] + e3[k]

    own_flops, uses, pair_use = [], [], []
    for c, (sp, idx) in enumerate(zip(space.choices, space.choice_decisions, strict=True)):
        pb = dict(zip(sp.blocks, probs[idx.block], strict=True))
        p = {b: pb.get(b, zero) for b in (*CONNECTION_BLOCKS, *PAIRWISE_BLOCKS)}
        edim = {b: (probs[j] * probs[j].new_tensor(sp.dims[b])).sum() for b, j in idx.dims.items()}
        p_pair = sum(p[b] for b in PAIRWISE_BLOCKS)
        flops, width2d = zero, zero
        use = dict.fromkeys(sp.candidates, zero)
        if idx.conns:
            conn = connection_weights(space, probs, c)
            n_rows = sum(conn[k] * e_rows(k) for k in sp.candidates)
            if LINEAR in edim:
                fan_in = sum(conn[k] * e_flat(k) for k in sp.candidates)
                flops = flops + p[LINEAR] * 2 * fan_in * edim[LINEAR]
                width2d = width2d + p[LINEAR] * edim[LINEAR]
            if DOT_PRODUCT in edim:
                flops = flops + p[DOT_PRODUCT] * 4 * d * n_rows * edim[DOT_PRODUCT]
                width2d = width2d + p[DOT_PRODUCT] * n_rows * edim[DOT_PRODUCT]
            if EMBED_FC in edim:
                flops = flops + p[EMBED_FC] * 2 * d * n_rows * edim[EMBED_FC]
            projected = sum(conn[k] * e2[k] for k in sp.candidates)
            flops = flops + (p[DOT_PRODUCT] + p[EMBED_FC]) * 2 * d * projected
            p_conn = sum(p[b] for b in CONNECTION_BLOCKS)
            use = {k: p_conn * conn[k] for k in sp.candidates}
        pairs = {}
        if idx.left is not None:
            left, right = probs[idx.left], probs[idx.right]
            width2d = width2d + p_pair * sum(
                r * e_flat(k) for k, r in zip(sp.candidates, right, strict=True)
            )
            for a, k in enumerate(sp.candidates):
                use[k] = use[k] + p_pair * (1 - (1 - left[a]) * (1 - right[a]))
                for b, j in enumerate(sp.candidates):
                    pairs[(k, j)] = p_pair * left[a] * right[b]
        if DOT in pb:
            rows, rows_sq = _dot_rows_squared(space, probs, c, moments)
            flops = flops + p[DOT] * 2 * d * rows_sq
            width2d = width2d + p[DOT] * (rows_sq - rows) / 2
        k = choice_input(c)
        if k in space.aligned_inputs:
            moments[k] = _choice_rows(space, probs, c, moments)
        p2[k] = p[LINEAR] + p[DOT_PRODUCT] + p[DOT] + p_pair
        e2[k] = width2d
        e3[k] = p[EMBED_FC] * edim[EMBED_FC] if EMBED_FC in edim else zero
        own_flops.append(flops)
        uses.append(use)
        pair_use.append(pairs)

    n = space.num_choices
    reach: list[torch.Tensor] = [zero] * n
    reach[n - 1] = zero + 1
    for c in range(n - 2, -1, -1):
        k = choice_input(c)
        missed = [1 - reach[j] * uses[j][k] for j in range(c + 1, n) if k in uses[j]]
        reach[c] = 1 - torch.stack(missed).prod() if missed else zero
    total = sum(r * f for r, f in zip(reach, own_flops, strict=True))
    for i, j in {pair for pairs in pair_use for pair in pairs}:
        missed = [
            1 - reach[c] * pairs[(i, j)] for c, pairs in enumerate(pair_use) if (i, j) in pairs
        ]
        total = total + (1 - torch.stack(missed).prod()) * 2 * bn * (e_flat(i) + e_flat(j))
    return total + 2 * e_flat(choice_input(n - 1))
