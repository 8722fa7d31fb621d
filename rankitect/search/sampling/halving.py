"""Successive halving (Jamieson & Talwalkar) over the best proxy candidates: each rung
evaluates the survivors at a growing data budget and keeps the best ``1 / eta`` of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Rung:
    budget: int
    candidates: list  # what was evaluated at this rung, best first
    scores: list[float]  # their scores (lower is better), aligned with ``candidates``


def survivors(n: int, eta: float, keep_at_least: int) -> int:
    """How many of ``n`` candidates go on to the next rung."""
    return min(n, max(keep_at_least, math.ceil(n / eta)))


def successive_halving(
    candidates: Sequence[T],
    budgets: Sequence[int],
    evaluate: Callable[[list[T], int, int], list[float]],
    *,
    eta: float = 2.0,
    finalists: int = 1,
) -> list[Rung]:
    """Run the rungs; ``evaluate(candidates, budget, rung_index)`` returns their scores (lower
    is better; NaN counts as worst). Every rung but the last is followed by a cut to
    `survivors`; the last rung's candidates, sorted, are the finalists (at most
    ``finalists`` of them)."""
    if eta <= 1:
        raise ValueError(f"method.halving.eta must be > 1, got {eta}")
    if finalists < 1:
        raise ValueError(f"method.halving.finalists must be >= 1, got {finalists}")
    if not budgets or list(budgets) != sorted(budgets):
        raise ValueError(f"method.halving.budgets must be non-empty and ascending: {budgets}")
    current = list(candidates)
    rungs: list[Rung] = []
    for r, budget in enumerate(budgets):
        scores = evaluate(current, int(budget), r)
        order = sorted(
            range(len(current)),
            key=lambda i: math.inf if math.isnan(scores[i]) else scores[i],
        )
        ranked = [current[i] for i in order]
        rungs.append(Rung(int(budget), ranked, [scores[i] for i in order]))
        last = r == len(budgets) - 1
        keep = finalists if last else survivors(len(ranked), eta, finalists)
        current = ranked[:keep]
    return rungs
