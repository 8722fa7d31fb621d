"""The contract between `rankitect-search` and a one-shot search method (RL, DNAS, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import lightning as L
from lightning.pytorch.callbacks import Callback

from rankitect.search.outcome import SearchOutcome
from rankitect.space.space import SearchSpace


class SearchMethod(ABC):
    """A search method built from ``conf/method/<name>.yaml`` (``_target_`` + its settings).

    `rankitect-search` calls `build` once, fits the returned module with the callbacks (the
    search algorithm lives in callbacks, so its state is in every checkpoint), then asks
    `outcome` for the found architecture.
    """

    name: str = "method"

    @abstractmethod
    def build(self, space: SearchSpace) -> tuple[L.LightningModule, list[Callback]]:
        """The LightningModule to fit and the callbacks that run the search."""

    @abstractmethod
    def outcome(self, module: L.LightningModule, callbacks: list[Callback]) -> SearchOutcome:
        """The found architecture, decision probabilities and curves after fitting."""
