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
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    ROW_BLOCKS,
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

    The default input is also read when every connection is off: ``p_d + prod_k (1 - p_k)``.
    Works on ``(..., 2)`` weights; returns ``(...)`` tensors.
    """
    sp, idx = space.choices[c], space.choice_decisions[c]
    on = [weights[j][..., 1] for j in idx.conns]
    all_off = torch.stack([1 - p for p in on]).prod(0)
    out = dict(zip(sp.candidates, on, strict=True))
    out[sp.default_input] = out[sp.default_input] + all_off
    return out


def expected_flops(space: SearchSpace, probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Expected per-example FLOPs when every decision is drawn independently from ``probs``.

    ``probs``: one probability vector ``(cardinality,)`` per decision, in decision order.
    Widths are propagated as expectations through the DAG, which is exact because FLOPs are
    multilinear in independent decisions (each product pairs a Choice's own decisions with
    its inputs' widths). Two terms are OR-events and use an independence approximation
    (exact for one-hot probabilities and when the events are in fact independent, e.g. a
    chain of Choices): whether a Choice is reachable from the classifier, and whether a shared
    pairwise projection ``FC_ij`` is used by at least one reachable Choice.
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
        k = choice_input(c)
        p2[k] = p[LINEAR] + p[DOT_PRODUCT] + p_pair
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
