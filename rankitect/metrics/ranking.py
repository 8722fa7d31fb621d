"""AUC and rank correlation for proxy studies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
from torchmetrics.classification import BinaryAUROC


def make_auroc(thresholds: int | None = None, **kwargs) -> BinaryAUROC:
    """torchmetrics ``BinaryAUROC`` on probabilities.

    ``thresholds=None`` is exact: it keeps every prediction (O(N) memory, gathered and sorted
    at ``compute()``). An int uses that many evenly spaced thresholds in ``[0, 1]``: constant
    memory and a small sum-reduced state under DDP, at an error of roughly
    ``1 / thresholds``. Use it for large validation sets (e.g. ``10_000`` for Criteo-size data).
    """
    if thresholds is not None and thresholds < 2:
        raise ValueError(f"thresholds must be None or >= 2, got {thresholds}")
    return BinaryAUROC(thresholds=thresholds, **kwargs)


def kendall_tau(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Kendall's tau-b between two scorings of the same items (e.g. proxy NE vs long-run NE).

    Wraps ``scipy.stats.kendalltau``; ``nan`` when either side is constant.
    """
    a, b = (
        np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
        for v in (x, y)
    )
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"Kendall tau needs at least 2 items, got {a.size}")
    return float(scipy.stats.kendalltau(a, b).statistic)
