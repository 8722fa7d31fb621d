"""`SupernetModule`: the weight-sharing supernet and an in-place baseline model, co-trained.

Every training step trains one subnet of the supernet (hard masks of ``self.arch``, which the
search callback sets before the step; ``None`` trains the whole supernet) and the baseline
model on the same batch, and returns both batch NEs so the callback can form the reward
``NE%(a)`` of paper Eq. 4 (Figure 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from rankitect.metrics import NormalizedEntropy, normalized_entropy
from rankitect.nonfinite import SkipsNonFiniteSteps
from rankitect.space.arch import Arch
from rankitect.space.factory import build_supernet
from rankitect.space.space import SearchSpace
from rankitect.space.spaces import conf_dir
from rankitect.space.subnet import materialize

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
BaselineConfig = str | Mapping[str, Any] | None


def shipped_models() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def build_baseline(space: SearchSpace, baseline: BaselineConfig) -> nn.Module | None:
    """The in-place baseline model described by the ``baseline`` config value.

    ``"seed"``: the space's seed architecture, materialised; a path ending in ``.json``: an
    `Arch` of ``space``; the name of a shipped model config (``conf/model/<name>.yaml``, e.g.
    ``dlrm``) or a model config mapping (``_target_`` taking ``spec=``, ``_partial_`` or not):
    that hand-designed model; ``None``: no baseline (only for ``reward: absolute``).
    """
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        if "_target_" not in baseline:
            raise ValueError("baseline: a model config needs a _target_ (a model class)")
        # Call the partial ourselves: instantiate would turn the FeatureSpec into a config.
        return instantiate(OmegaConf.create(dict(baseline)), _partial_=True)(spec=space.spec)
    if not isinstance(baseline, str):
        raise ValueError(f"baseline must be a string, a model config or null, got {baseline!r}")
    if baseline == "seed":
        try:
            return materialize(space, space.seed_arch())
        except ValueError as err:
            raise ValueError(
                f"baseline: 'seed' needs a space with a seed architecture ({err}); give an arch "
                "JSON path or a model config instead"
            ) from None
    if baseline.endswith(".json"):
        path = Path(baseline)
        if not path.is_file():
            raise ValueError(f"baseline: arch file {baseline!r} does not exist")
        try:
            arch = space.arch_from_json(path.read_text())
        except ValueError as err:
            raise ValueError(f"baseline: {baseline!r} is not an Arch of the space: {err}") from None
        return materialize(space, arch)
    if baseline in shipped_models():
        return build_baseline(space, OmegaConf.load(conf_dir() / "model" / f"{baseline}.yaml"))
    raise ValueError(
        f"baseline: unknown value {baseline!r}; expected 'seed', a path to an arch .json, a "
        f"model config, or one of the shipped models {shipped_models()}"
    )


def plain(config: Any) -> Any:
    """OmegaConf containers as plain dicts/lists, so hyper-parameters pickle and load anywhere."""
    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


class SupernetModule(SkipsNonFiniteSteps, L.LightningModule):
    """The supernet of ``space`` and an in-place baseline model, trained on the same batches.

    Args:
        space: the search space (not saved in the hyper-parameters; rebuild it from config).
        baseline: see `build_baseline`; a plain config, never an ``nn.Module``.
        lr: Adam learning rate of the supernet and baseline weights.
        weight_decay: Adam weight decay of the supernet and baseline weights.
        max_nonfinite_in_a_row: a step whose loss is non-finite updates no weight
            (`SkipsNonFiniteSteps`); this many in a row stop the fit.

    ``arch`` is the subnet trained by the next step and ``eval_arch`` the one validated (both
    set by the search callback); ``search_record`` is what the callback hands back at the end
    of fit. It travels in the module's state dict (``get_extra_state``), so it reaches the main
    process under ``ddp_spawn``, where callbacks' states do not.
    """

    # Each step runs one subnet: `rankitect-search` then picks a DDP strategy variant with
    # find_unused_parameters (rankitect.search.run.trainer_options).
    leaves_unused_parameters = True

    def __init__(
        self,
        space: SearchSpace,
        baseline: BaselineConfig = "seed",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_nonfinite_in_a_row: int = 10,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        baseline = plain(baseline)
        self.save_hyperparameters(ignore=["space"])
        self.space = space
        self.supernet = build_supernet(space)
        self.baseline = build_baseline(space, baseline)
        self.arch: Arch | None = None
        self.eval_arch: Arch | None = None
        self.search_record: dict[str, Any] | None = None
        self.val_ne = NormalizedEntropy()
        self.val_ne_baseline = NormalizedEntropy()
        self.init_nonfinite(max_nonfinite_in_a_row)

    def setup(self, stage: str) -> None:
        # Each step runs one subnet, so most supernet weights get no gradient; DDP must be told
        # or it fails at the second step with a less helpful error.
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if ddp_kwargs is not None and not ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(
                "the supernet leaves parameters unused at every step: set trainer.strategy to "
                "ddp_find_unused_parameters_true (or ddp_spawn_find_unused_parameters_true)"
            )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.supernet(dense, sparse, arch=self.arch)

    def _baseline_loss(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor):
        logits = self.baseline(dense, sparse)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        if hasattr(self.baseline, "regularization_loss"):  # e.g. a baseline's embedding L2
            loss = loss + self.baseline.regularization_loss()
        return loss, logits

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        dense, sparse, label = batch
        logits = self(dense, sparse)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        out = {"ne_arch": self._batch_ne(logits, label)}
        self.log("train/loss", loss, prog_bar=True)
        # the space's embedding L2 (and, inside the forward, its dropout): the supernet trains
        # under the regularisation that `rankitect-train model=arch` retrains with
        if hasattr(self.supernet, "regularization_loss"):
            loss = loss + self.supernet.regularization_loss()
        if self.baseline is not None:
            base_loss, base_logits = self._baseline_loss(dense, sparse, label)
            out["ne_baseline"] = self._batch_ne(base_logits, label)
            self.log("train/loss_baseline", base_loss)
            # Disjoint parameters: the sum trains both models with their own gradients.
            loss = loss + base_loss
        self.finite_step(loss)  # a non-finite loss still runs its backward; no update follows
        return {"loss": loss, **out}

    @staticmethod
    def _batch_ne(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return normalized_entropy(torch.sigmoid(logits.detach()), label, validate_args=False)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        dense, sparse, label = batch
        self.val_ne.update(torch.sigmoid(self.supernet(dense, sparse, arch=self.eval_arch)), label)
        if self.baseline is not None:
            self.val_ne_baseline.update(torch.sigmoid(self.baseline(dense, sparse)), label)

    def on_validation_epoch_end(self) -> None:
        ne = self.val_ne.compute()
        self.log("val/ne", ne, prog_bar=True)
        if self.baseline is not None:
            base = self.val_ne_baseline.compute()
            self.log("val/ne_baseline", base)
            self.log("val/ne_pct", (ne - base) / base)
            self.val_ne_baseline.reset()
        self.val_ne.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {"search_record": self.search_record}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.search_record = state["search_record"]
