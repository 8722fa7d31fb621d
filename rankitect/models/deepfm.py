"""DeepFM: LR + FM second-order term + DNN, sharing one set of embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import MLP, FactorizationMachine, FirstOrder
from rankitect.models.embedding import FeatureEmbedding


class DeepFM(CTRModel):
    """``logit = LR(dense, sparse) + FM(E) + MLP([E_1 .. E_N, dense])``.

    The FM acts on the sparse embeddings only; dense features enter the LR and the MLP. As in
    FuxiCTR the LR part has no bias (the MLP's output layer has one). FLOPs:
    ``2 * n_dense + MLP`` (the FM is element-wise, 0 FLOPs in ``FlopCounterMode``).
    """

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
        self.first_order = FirstOrder(spec, emb_init_std)
        self.embedding = FeatureEmbedding(spec, embedding_dim, emb_init_std)
        self.fm = FactorizationMachine()
        in_dim = spec.n_sparse * embedding_dim + spec.n_dense
        self.mlp = MLP(in_dim, hidden_units, activation, batch_norm, dropout, out_dim=1)
        self._init_linear()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(sparse)
        deep = self.mlp(torch.cat([emb.flatten(1), dense], dim=1)).squeeze(-1)
        return self.first_order(dense, sparse) + self.fm(emb) + deep

    def flops(self) -> int:
        return self.first_order.flops() + self.mlp.flops()

    def num_params(self) -> int:
        return self.first_order.num_params() + self.embedding.num_params() + self.mlp.num_params()
