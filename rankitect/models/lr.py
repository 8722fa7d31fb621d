"""LR: logistic regression on one-hot sparse ids and raw dense features."""

from __future__ import annotations

import torch
from torch import nn

from rankitect.data.spec import FeatureSpec
from rankitect.models.base import CTRModel
from rankitect.models.blocks import FirstOrder


class LR(CTRModel):
    """``logit = sum_f w[f, id_f] + v . dense + b``. FLOPs ``2 * n_dense``."""

    def __init__(self, spec: FeatureSpec, emb_l2: float = 0.0, emb_init_std: float = 1e-4) -> None:
        super().__init__(spec, emb_l2)
        self.first_order = FirstOrder(spec, emb_init_std)
        self.bias = nn.Parameter(torch.zeros(1))
        self._init_linear()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.first_order(dense, sparse) + self.bias

    def flops(self) -> int:
        return self.first_order.flops()

    def num_params(self) -> int:
        return self.first_order.num_params() + 1
