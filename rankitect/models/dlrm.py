"""DLRM: dense arch (bottom MLP), sparse arch (embeddings), interaction, over arch (top MLP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import MLP, DotInteraction, as_units
from rankitect.models.embedding import FeatureEmbedding

INTERACTIONS = ("dot", "cat")


class DLRM(CTRModel):
    """DLRM with ``F = N + [n_dense > 0]`` feature vectors of size ``D``.

    The dense arch maps ``dense -> bottom_hidden_units -> D`` (every layer with norm/activation;
    skipped when ``n_dense == 0``). ``dot``: the over arch sees ``[dense_emb, upper-triangle
    dot products]`` (``D`` + ``F(F-1)/2`` inputs; ``dense_emb`` only if there are dense features).
    ``cat``: it sees all ``F`` vectors flattened (what BARS tuned on Frappe_x1). Dropout applies
    to the over arch only. FLOPs: ``bottom MLP + 2 * F^2 * D`` (``dot`` only) ``+ top MLP``.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 10,
        bottom_hidden_units: Sequence[int] = (),
        top_hidden_units: Sequence[int] = (400, 400, 400),
        interaction: str = "dot",
        activation: str = "relu",
        batch_norm: bool = True,
        dropout: float = 0.4,
        emb_l2: float = 0.0,
        emb_init_std: float = 1e-4,
    ) -> None:
        super().__init__(spec, emb_l2)
        if interaction not in INTERACTIONS:
            raise ValueError(f"DLRM interaction must be one of {INTERACTIONS}, got {interaction!r}")
        bottom = as_units(bottom_hidden_units, "DLRM bottom_hidden_units")
        top_hidden_units = as_units(top_hidden_units, "DLRM top_hidden_units")
        self.embedding = FeatureEmbedding(spec, embedding_dim, emb_init_std)
        self.dense_arch = (
            MLP(spec.n_dense, (*bottom, embedding_dim), activation, batch_norm)
            if spec.n_dense
            else None
        )
        n_vectors = spec.n_sparse + (1 if spec.n_dense else 0)
        if interaction == "dot":
            if n_vectors < 2:
                raise ValueError(
                    "DLRM dot interaction needs >= 2 feature vectors (sparse fields, plus one for "
                    f"the dense features), got {n_vectors}"
                )
            self.dot = DotInteraction(n_vectors, embedding_dim)
            top_in = self.dot.out_features + (embedding_dim if spec.n_dense else 0)
        else:
            self.dot = None
            top_in = n_vectors * embedding_dim
        self.over_arch = MLP(top_in, top_hidden_units, activation, batch_norm, dropout, out_dim=1)
        self._init_linear()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        feats = self.embedding(sparse)
        dense_emb = None
        if self.dense_arch is not None:
            dense_emb = self.dense_arch(dense)
            feats = torch.cat([dense_emb.unsqueeze(1), feats], dim=1)
        if self.dot is None:
            top_in = feats.flatten(1)
        else:
            top_in = self.dot(feats)
            if dense_emb is not None:
                top_in = torch.cat([dense_emb, top_in], dim=1)
        return self.over_arch(top_in).squeeze(-1)

    def flops(self) -> int:
        bottom = self.dense_arch.flops() if self.dense_arch is not None else 0
        interaction = self.dot.flops() if self.dot is not None else 0
        return bottom + interaction + self.over_arch.flops()

    def num_params(self) -> int:
        bottom = self.dense_arch.num_params() if self.dense_arch is not None else 0
        return self.embedding.num_params() + bottom + self.over_arch.num_params()
