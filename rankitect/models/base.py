"""`CTRModel`: what every baseline offers the training loop (logits, cost, regulariser)."""

from __future__ import annotations

import torch
from torch import nn

from rankitect.data.spec import FeatureSpec
from rankitect.models.embedding import FeatureEmbedding


class CTRModel(nn.Module):
    """``forward(dense (B, n_dense) float, sparse (B, n_sparse) int64) -> (B,)`` logits.

    Subclasses give analytic per-example ``flops()`` (equal to ``FlopCounterMode``'s count of one
    forward pass divided by the batch size, in train and eval mode) and ``num_params()``.
    ``emb_l2`` is the BARS/FuxiCTR ``embedding_regularizer``; the training loop adds
    ``regularization_loss()`` to the mean BCE every step.
    """

    def __init__(self, spec: FeatureSpec, emb_l2: float = 0.0) -> None:
        super().__init__()
        if not emb_l2 >= 0:  # NaN too
            raise ValueError(f"emb_l2 must be >= 0, got {emb_l2}")
        self.spec = spec
        self.emb_l2 = float(emb_l2)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Every embedding table, first-order (dim-1) tables included, as FuxiCTR regularises."""
        tables = [m for m in self.modules() if isinstance(m, FeatureEmbedding)]
        return [p for m in tables for p in m.parameters()]

    def regularization_loss(self) -> torch.Tensor:
        """FuxiCTR's embedding regulariser ``emb_l2 / 2 * sum ||W||_2^2`` over whole tables.

        Whole tables, not just the rows of the batch, so its gradient is ``emb_l2 * W`` on every
        row each step (weight decay on the tables).
        """
        params = self.embedding_parameters()
        if self.emb_l2 == 0.0:
            return params[0].new_zeros(())
        return 0.5 * self.emb_l2 * torch.stack([p.pow(2).sum() for p in params]).sum()

    def flops(self) -> int:
        raise NotImplementedError

    def num_params(self) -> int:
        raise NotImplementedError

    def _init_linear(self) -> None:
        # FuxiCTR's reset_parameters: xavier-normal weights, zero biases for every Linear.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
