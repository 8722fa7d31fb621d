"""Learning-curve low fidelity (AutoML for large capacity modeling, §3.1).

A trial's curve is its validation NE after ``n`` training examples, at a few points. Pilot
trials train fully; `pick_truncation` finds the earliest number of examples at which the
pilots' ranking (by the NE extrapolated from the truncated curve, or by the NE reached there)
agrees with their full-run ranking by a Kendall tau of at least ``threshold``. Every later trial
trains only that far, and `fit_power_law` extrapolates its curve to the full run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from rankitect.metrics import kendall_tau

Curve = Sequence[tuple[float, float]]  # (examples seen, validation NE), ascending examples
RANK_BY = ("extrapolated", "last")


def power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``NE(x) = a + b * x^-c``: decreasing towards the asymptote ``a`` for ``b, c > 0``."""
    return a + b * np.power(x, -c)


@dataclass(frozen=True)
class CurveFit:
    value: float  # the extrapolated NE at the target (the last value on a fallback)
    params: tuple[float, float, float] | None  # (a, b, c) on x = examples / target
    fallback: bool  # the fit failed or was not attempted (fewer than 3 points)


def fit_power_law(curve: Curve, target: float) -> CurveFit:
    """Fit `power_law` to ``curve`` and evaluate it at ``target`` examples.

    Examples are scaled by ``target`` (so the prediction is ``a + b``) to keep the fit well
    conditioned; bounds ``0 <= a``, ``0 <= b``, ``0.01 <= c <= 3`` keep it a decreasing
    curve. With fewer than 3 points, a failed or non-finite fit, the last value is returned
    and ``fallback`` is set.
    """
    if not curve:
        raise ValueError("fit_power_law needs a non-empty curve")
    n = np.asarray([p[0] for p in curve], dtype=np.float64)
    y = np.asarray([p[1] for p in curve], dtype=np.float64)
    last = float(y[-1])
    if len(curve) < 3 or target <= 0 or not np.all(np.isfinite(y)) or np.any(n <= 0):
        return CurveFit(last, None, True)
    x = n / float(target)
    hi = float(max(y.max(), 1e-6))
    p0 = (max(float(y.min()) * 0.9, 0.0), max(float(y[0] - y[-1]), 1e-3) * x[0] ** 0.5, 0.5)
    try:
        with warnings.catch_warnings():
            # 3 points fit 3 parameters exactly: no covariance estimate, which is no failure.
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                power_law,
                x,
                y,
                p0=p0,
                bounds=([0.0, 0.0, 0.01], [2.0 * hi, np.inf, 3.0]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError):
        return CurveFit(last, None, True)
    value = float(power_law(np.array([1.0]), *params)[0])
    if not math.isfinite(value):
        return CurveFit(last, None, True)
    return CurveFit(value, (float(params[0]), float(params[1]), float(params[2])), False)


def truncate(curve: Curve, examples: float) -> list[tuple[float, float]]:
    """The points of ``curve`` measured after at most ``examples`` training examples."""
    return [(float(n), float(v)) for n, v in curve if n <= examples]


@dataclass(frozen=True)
class Truncation:
    examples: int  # the chosen truncation point (the largest candidate when none qualifies)
    reached: bool  # whether some candidate reached the threshold
    taus: list[dict]  # per candidate: examples, tau_last, tau_extrapolated


def pick_truncation(
    pilots: Sequence[Curve],
    candidates: Sequence[int],
    full_examples: int,
    threshold: float,
    rank_by: str = "extrapolated",
) -> Truncation:
    """The earliest candidate truncation point whose pilot ranking has Kendall tau >=
    ``threshold`` with the full-run ranking (the pilots' NE at ``full_examples``)."""
    if rank_by not in RANK_BY:
        raise ValueError(f"method.low_fidelity.rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if len(pilots) < 2:
        raise ValueError(f"need >= 2 pilot curves to pick a truncation, got {len(pilots)}")
    if not candidates or list(candidates) != sorted(set(candidates)):
        raise ValueError(f"truncation candidates must be ascending and unique: {candidates}")
    final = [float(c[-1][1]) for c in pilots]
    taus = []
    for t in candidates:
        cut = [truncate(c, t) for c in pilots]
        if any(not c for c in cut):
            raise ValueError(
                f"truncation candidate {t}: a pilot curve has no point at or before it"
            )
        last = [c[-1][1] for c in cut]
        extrap = [fit_power_law(c, full_examples).value for c in cut]
        row = {
            "examples": int(t),
            "tau_last": _tau(last, final),
            "tau_extrapolated": _tau(extrap, final),
        }
        taus.append(row)
        if row[f"tau_{rank_by}"] >= threshold:
            return Truncation(int(t), True, taus)
    return Truncation(int(candidates[-1]), False, taus)


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    tau = kendall_tau(x, y)
    return -1.0 if math.isnan(tau) else tau  # a constant ranking carries no information
