"""DCN-v2: full-rank cross network and a deep tower, parallel or stacked."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import MLP, CrossNetV2, as_units
from rankitect.models.embedding import FeatureEmbedding

STRUCTURES = ("parallel", "stacked")


class DCNv2(CTRModel):
    """DCN-v2 on ``x0 = [E_1 .. E_N, dense]`` (``d0 = N * D + n_dense``).

    ``parallel``: ``Linear([CrossNet(x0), MLP(x0)]) -> 1`` (BARS' Frappe_x1 choice);
    ``stacked``: ``Linear(MLP(CrossNet(x0))) -> 1``. Dropout applies to the deep tower only.
    FLOPs: ``2 * L * d0^2`` (cross) ``+ MLP + 2 * head_in``.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 10,
        num_cross_layers: int = 4,
        hidden_units: Sequence[int] = (400, 400, 400),
        structure: str = "parallel",
        activation: str = "relu",
        batch_norm: bool = True,
        dropout: float = 0.4,
        emb_l2: float = 0.0,
        emb_init_std: float = 1e-4,
    ) -> None:
        super().__init__(spec, emb_l2)
        if structure not in STRUCTURES:
            raise ValueError(f"DCNv2 structure must be one of {STRUCTURES}, got {structure!r}")
        hidden = as_units(hidden_units, "DCNv2 hidden_units")
        if not hidden:
            raise ValueError("DCNv2 needs a deep tower: hidden_units must not be empty")
        self.structure = structure
        self.embedding = FeatureEmbedding(spec, embedding_dim, emb_init_std)
        d0 = spec.n_sparse * embedding_dim + spec.n_dense
        self.cross = CrossNetV2(d0, num_cross_layers)
        self.deep = MLP(d0, hidden, activation, batch_norm, dropout)
        head_in = d0 + hidden[-1] if structure == "parallel" else hidden[-1]
        self.head = nn.Linear(head_in, 1)
        self._init_linear()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        if self.structure == "parallel":
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)
        else:
            h = self.deep(self.cross(x0))
        return self.head(h).squeeze(-1)

    def flops(self) -> int:
        return self.cross.flops() + self.deep.flops() + 2 * self.head.in_features

    def num_params(self) -> int:
        head = self.head.in_features + 1
        return self.embedding.num_params() + self.cross.num_params() + self.deep.num_params() + head
