"""Log loss, Normalized Entropy (He et al., 2014) and the paper's window NE as torchmetrics Metrics.

``NE = mean log loss / H(p)``, ``H(p) = -p log p - (1 - p) log(1 - p)``, where ``p`` is the mean
label of the same examples. Lower is better; always predicting the base rate gives 1.0.

``preds`` are probabilities in ``[0, 1]`` (apply ``torch.sigmoid`` to logits first), clamped to
``[eps, 1 - eps]`` before the log; ``target`` are labels in ``[0, 1]``. States are float64 sums
(``dist_reduce_fx="sum"``, or concatenated per-update sums for the window), so values are exact
under DDP. When every label is 0, or every label is 1, ``H(p) = 0`` and NE is undefined: it is
reported as ``nan``, as is any value computed from no examples.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

DEFAULT_EPS = 1e-7
_ROW = 4  # per-update row of the window state: update index, sum log loss, count, sum labels
_CHUNK = 1024  # the window state merges every _CHUNK single-update rows into one tensor


def _prepare(
    preds: torch.Tensor, target: torch.Tensor, validate_args: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    if not preds.is_floating_point():
        raise ValueError(f"preds must be floating-point probabilities, got dtype {preds.dtype}")
    p = preds.detach().reshape(-1).double()
    y = target.detach().reshape(-1).double()
    # These checks synchronise with the device; validate_args=False skips them in hot loops.
    if validate_args:
        if not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError("preds must be probabilities in [0, 1]; apply torch.sigmoid to logits")
        if not bool(((y >= 0) & (y <= 1)).all()):
            raise ValueError("target must be labels in [0, 1]")
    return p, y


def _sums(p: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """(sum of log loss, number of examples, sum of labels), float64 scalars."""
    p = p.clamp(eps, 1.0 - eps)
    logloss = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
    return logloss.sum(), p.new_tensor(float(p.numel())), y.sum()


def _ne(sum_logloss: torch.Tensor, count: torch.Tensor, sum_labels: torch.Tensor) -> torch.Tensor:
    rate = sum_labels / count
    entropy = -(torch.special.xlogy(rate, rate) + torch.special.xlogy(1 - rate, 1 - rate))
    # entropy == 0 (one class only) or nan (no examples): NE is undefined.
    return torch.where(entropy > 0, sum_logloss / count / entropy, torch.nan)


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")


def normalized_entropy(
    preds: torch.Tensor, target: torch.Tensor, eps: float = DEFAULT_EPS, validate_args: bool = True
) -> torch.Tensor:
    """NE of one set of predictions (e.g. a mini-batch NE for a reward), float64 scalar."""
    _check_eps(eps)
    return _ne(*_sums(*_prepare(preds, target, validate_args), eps))


class _EntropySums(Metric):
    """Sum of log loss, count and sum of labels; LogLoss and NE share these states, so a
    ``MetricCollection`` (compute groups on) updates them once for both."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, eps: float = DEFAULT_EPS, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_eps(eps)
        self.eps = eps
        self.validate_args = validate_args
        for name in ("sum_logloss", "count", "sum_labels"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        logloss, count, labels = _sums(*_prepare(preds, target, self.validate_args), self.eps)
        self.sum_logloss += logloss
        self.count += count
        self.sum_labels += labels


class LogLoss(_EntropySums):
    """Mean binary cross-entropy of probabilities (nan before any example)."""

    def compute(self) -> torch.Tensor:
        return self.sum_logloss / self.count


class NormalizedEntropy(_EntropySums):
    """NE over every example since the last reset (nan when the labels hold a single class)."""

    def compute(self) -> torch.Tensor:
        return _ne(self.sum_logloss, self.count, self.sum_labels)


class WindowNormalizedEntropy(Metric):
    """NE over the trailing ``fraction`` of the examples seen since the last reset.

    The paper's proxy is the window NE over the last 25% of a run's training data. Each update
    appends a row (update index, sum log loss, count, sum labels); ``compute()`` adds up the rows
    with the same update index across DDP ranks (update ``k`` on every rank is one global step),
    then takes the shortest run of trailing steps that holds at least ``fraction`` of all
    examples. Boundaries are whole steps, never pro-rated: the value is the exact NE of those
    examples, which may be slightly more than ``fraction`` of them.

    Memory is 32 bytes per update per rank. ``forward()`` accumulates and returns the NE of the
    batch (the window of a single update), skipping torchmetrics' copy of the whole state.
    Lightning resets a metric object logged with ``self.log(name, metric)`` every epoch; to get a
    run-long window, log ``metric.compute()`` and reset the metric only at the start of a run.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        fraction: float = 0.25,
        eps: float = DEFAULT_EPS,
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        _check_eps(eps)
        self.fraction = fraction
        self.eps = eps
        self.validate_args = validate_args
        # Rows are flat 1-D float64 tensors, so ranks with no update still gather consistently.
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("n_updates", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        logloss, count, labels = _sums(*_prepare(preds, target, self.validate_args), self.eps)
        # The index stays a device tensor: no host sync per step.
        self.rows.append(torch.stack([self.n_updates, logloss, count, labels]))
        self.n_updates += 1
        if len(self.rows) >= _CHUNK and self.rows[-_CHUNK].numel() == _ROW:
            self.rows[-_CHUNK:] = [torch.cat(self.rows[-_CHUNK:])]

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.update(preds, target)
        self._forward_cache = normalized_entropy(preds, target, self.eps, validate_args=False)
        return self._forward_cache

    def compute(self) -> torch.Tensor:
        # After a DDP sync ``rows`` is one tensor; unsynced it is a list of tensors.
        rows = self.rows
        if isinstance(rows, list):
            rows = torch.cat([torch.zeros(0, dtype=torch.float64, device=self.device), *rows])
        rows = rows.reshape(-1, _ROW)
        if rows.shape[0] == 0:
            return torch.tensor(torch.nan, dtype=torch.float64, device=self.device)
        step = rows[:, 0].long()
        per_step = rows.new_zeros(int(step.max()) + 1, _ROW - 1).index_add_(0, step, rows[:, 1:])
        suffix_counts = per_step[:, 1].flip(0).cumsum(0).flip(0)
        # suffix_counts never increases, so the steps whose suffix holds enough examples form a
        # prefix; the window starts at its last step.
        start = int((suffix_counts >= self.fraction * suffix_counts[0]).sum()) - 1
        sum_logloss, count, sum_labels = per_step[start:].sum(0)
        return _ne(sum_logloss, count, sum_labels)
