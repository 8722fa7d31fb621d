"""DNN: flattened embeddings ++ dense features -> MLP -> logit."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import MLP
from rankitect.models.embedding import FeatureEmbedding


class DNN(CTRModel):
    """``MLP([E_1 .. E_N, dense]) -> 1``. FLOPs: the MLP's, input ``N * D + n_dense``."""

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        batch_norm: bool = True,
        dropout: float = 0.2,
        emb_l2: float = 0.0,
        emb_init_std: float = 1e-4,
    ) -> None:
        super().__init__(spec, emb_l2)
        self.embedding = FeatureEmbedding(spec, embedding_dim, emb_init_std)
        in_dim = spec.n_sparse * embedding_dim + spec.n_dense
        self.mlp = MLP(in_dim, hidden_units, activation, batch_norm, dropout, out_dim=1)
        self._init_linear()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        return self.mlp(x).squeeze(-1)

    def flops(self) -> int:
        return self.mlp.flops()

    def num_params(self) -> int:
        return self.embedding.num_params() + self.mlp.num_params()
