"""Sparse feature embeddings: one table per field, stored as a single table with offsets."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from rankitect.data.spec import FeatureSpec


class FeatureEmbedding(nn.Module):
    """Look up every sparse field: int64 ``(B, n_sparse)`` -> float ``(B, n_sparse, dim)``.

    A single concatenated table keeps the lookup one kernel; ``offsets`` shift each field's
    ids into its own rows. Lookups cost no FLOPs in ``FlopCounterMode``'s count.
    """

    def __init__(self, spec: FeatureSpec, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"embedding_dim must be an int >= 1, got {dim!r}")
        if spec.n_sparse == 0:
            raise ValueError("FeatureEmbedding needs at least one sparse field")
        if not init_std >= 0:  # NaN too
            raise ValueError(f"embedding init_std must be >= 0, got {init_std}")
        self.dim = dim
        cards = torch.tensor(spec.sparse_cardinalities, dtype=torch.long)
        self.register_buffer("offsets", torch.cumsum(cards, 0) - cards, persistent=False)
        self.table = nn.Embedding(int(cards.sum()), dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.table(sparse + self.offsets)

    def num_params(self) -> int:
        return self.table.num_embeddings * self.dim
