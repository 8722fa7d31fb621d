"""NE, window NE and log loss as torchmetrics Metrics; AUC; Kendall tau."""

from rankitect.metrics.entropy import (
    LogLoss,
    NormalizedEntropy,
    WindowNormalizedEntropy,
    normalized_entropy,
)
from rankitect.metrics.ranking import kendall_tau, make_auroc

__all__ = [
    "LogLoss",
    "NormalizedEntropy",
    "WindowNormalizedEntropy",
    "kendall_tau",
    "make_auroc",
    "normalized_entropy",
]
