"""Building blocks of a Choice (paper §3.1) as plain functions of tensors.

The supernet (with weights sliced to an architecture) and the materialised subnet (with its own
compact weights) call the same functions, so both compute one and the same graph.
Shapes: ``(B, N, D)`` for 3-D embeddings, ``(B, S)`` for 2-D vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR = "linear"
EMBED_FC = "embed_fc"
DOT_PRODUCT = "dot_product"
PAIRWISE_GATING = "pairwise_gating"
PAIRWISE_SUM = "pairwise_sum"

BLOCKS = (LINEAR, EMBED_FC, DOT_PRODUCT, PAIRWISE_GATING, PAIRWISE_SUM)
# Blocks reading a subset of the candidate inputs ("K independent binary masks") and owning a
# searched output dimension.
CONNECTION_BLOCKS = (LINEAR, EMBED_FC, DOT_PRODUCT)
# Blocks reading one (left, right) pair of inputs; their width is the right input's width.
PAIRWISE_BLOCKS = (PAIRWISE_GATING, PAIRWISE_SUM)
# Blocks reading the 3-D adaptor (all inputs stacked as rows of an ``(B, N, D)`` tensor).
ROW_BLOCKS = (EMBED_FC, DOT_PRODUCT)
# Blocks producing a 2-D output; EmbedFC alone produces a 3-D one.
BLOCKS_2D = (LINEAR, DOT_PRODUCT, PAIRWISE_GATING, PAIRWISE_SUM)

LN_EPS = 1e-5


def embed_fc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Linear map on the middle axis: ``(B, N, D)`` with weight ``(M, N)`` -> ``(B, M, D)``."""
    return F.linear(x.transpose(1, 2), weight, bias).transpose(1, 2)


def compressed_dot(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``flatten(bmm(X, EmbedFC(X)^T))``: ``(B, N, D)`` -> ``(B, N * M)``, row-major in (N, M)."""
    return torch.bmm(x, embed_fc(x, weight, bias).transpose(1, 2)).flatten(1)


def norm_act(z: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor) -> torch.Tensor:
    """Layer normalisation over the last axis, then ReLU (appended after every block)."""
    return F.relu(F.layer_norm(z, ln_weight.shape, ln_weight, ln_bias, LN_EPS))


def masked_norm_act(
    z: torch.Tensor, support: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor
) -> torch.Tensor:
    """`norm_act` over the positions weighted by ``support`` (in [0, 1]); zero elsewhere.

    With a 0/1 support this is exactly `norm_act` on the supported positions, which is what a
    sliced subnet computes; soft supports give a differentiable weighted normalisation.
    """
    total = support.sum(-1, keepdim=True).clamp_min(1e-12)
    mean = (z * support).sum(-1, keepdim=True) / total
    var = (support * (z - mean).square()).sum(-1, keepdim=True) / total
    normed = (z - mean) * torch.rsqrt(var + LN_EPS) * ln_weight + ln_bias
    return support * F.relu(normed)


def interact(kind: str, projected_left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Pairwise interaction of ``FC_ij(x_i)`` with ``x_j`` (same width)."""
    if kind == PAIRWISE_GATING:
        return torch.sigmoid(projected_left) * right
    if kind == PAIRWISE_SUM:
        return projected_left + right
    raise ValueError(f"unknown pairwise block {kind!r}")


def bottleneck_fc(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """``FC_ij`` decomposed through a bottleneck: two linear maps, no activation between."""
    return F.linear(F.linear(x, w1, b1), w2, b2)


def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """3-D adaptor: concatenate ``(B, n_i, D)`` pieces along the middle axis."""
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)


def flatten_2d(x: torch.Tensor) -> torch.Tensor:
    """2-D view of an input: 2-D tensors as they are, ``(B, M, D)`` flattened to ``(B, M * D)``."""
    return x if x.dim() == 2 else x.flatten(1)
