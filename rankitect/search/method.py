"""The contract between `rankitect-search` and a one-shot search method (RL, DNAS, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from rankitect.search.outcome import SearchOutcome
from rankitect.space.space import SearchSpace


def to_plain(cfg: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """A method's sub-config (a Hydra node or a plain mapping; None: empty) as a plain dict."""
    if cfg is None:
        return {}
    return dict(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)


def callback_config(cfg: Any, default: Any) -> Any:
    """A search callback of a method config (``conf/callbacks/method/*.yaml``): ``default``
    when None; a config with ``_target_`` built with `hydra.utils.instantiate` (a
    ``_partial_: true`` one gives the function the method calls with its runtime arguments);
    otherwise as given (already built, by Hydra's instantiation of the method)."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping | DictConfig) and "_target_" in cfg:
        return instantiate(cfg)
    return cfg


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
