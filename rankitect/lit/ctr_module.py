"""`CTRModule`: trains any CTR model ``forward(dense, sparse) -> (B,) logits`` with Lightning."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC

from rankitect.metrics import LogLoss, NormalizedEntropy
from rankitect.models.embedding import FeatureEmbedding
from rankitect.nonfinite import SkipsNonFiniteSteps

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def embedding_weights(model: nn.Module) -> list[torch.Tensor]:
    """Embedding tables: ``model.embedding_parameters()``, else every FeatureEmbedding."""
    if hasattr(model, "embedding_parameters"):
        return list(model.embedding_parameters())
    return [m.table.weight for m in model.modules() if isinstance(m, FeatureEmbedding)]


def eval_metrics(prefix: str, auc_thresholds: int | None) -> MetricCollection:
    return MetricCollection(
        {
            "ne": NormalizedEntropy(),
            "logloss": LogLoss(),
            # Binned AUROC keeps memory constant on large validation sets.
            "auc": BinaryAUROC(thresholds=auc_thresholds),
        },
        prefix=f"{prefix}/",
    )


class CTRModule(SkipsNonFiniteSteps, L.LightningModule):
    """BCE-with-logits training of a CTR model, logging NE, AUC and log loss.

    Args:
        model: the CTR ``nn.Module``, or a function of no arguments building it: then it is
            built in `configure_model`, which Lightning calls under the strategy's device and
            sharding context (FSDP).
        lr: Adam learning rate.
        emb_l2: embedding L2 regulariser; ``loss += emb_l2 / 2 * sum ||E||^2`` over the
            embedding tables (FuxiCTR's convention, used by the BARS configs). ``None`` takes
            the model's own ``emb_l2`` attribute (0 when it has none).
        weight_decay: Adam weight decay on the non-embedding parameters.
        lr_plateau_factor: multiply the learning rate by this when validation AUC does not
            improve for an epoch (BARS' ``reduce_lr_on_plateau``); ``None`` disables it.
        auc_thresholds: bins of the validation/test AUROC; ``None`` computes it exactly.
        max_nonfinite_in_a_row: a step with a non-finite loss updates nothing
            (`SkipsNonFiniteSteps`); this many in a row stop the fit with a `NonFiniteError`.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        lr: float = 1e-3,
        emb_l2: float | None = None,
        weight_decay: float = 0.0,
        lr_plateau_factor: float | None = 0.1,
        auc_thresholds: int | None = 10_000,
        max_nonfinite_in_a_row: int = 10,
    ) -> None:
        super().__init__()
        # The model is an nn.Module: keep it out of the pickled hyper-parameters.
        self.save_hyperparameters(ignore=["model"])
        if emb_l2 is not None and emb_l2 < 0:
            raise ValueError(f"emb_l2 must be >= 0, got {emb_l2}")
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be an nn.Module or a function building one, got {model!r}")
        self.model: nn.Module | None = None
        self._build_model = None if isinstance(model, nn.Module) else model
        if isinstance(model, nn.Module):
            self._attach(model)
        self.init_nonfinite(max_nonfinite_in_a_row)
        self.train_ne = NormalizedEntropy()
        self.val_metrics = eval_metrics("val", auc_thresholds)
        self.test_metrics = eval_metrics("test", auc_thresholds)

    def _attach(self, model: nn.Module) -> None:
        self.model = model
        emb_l2 = self.hparams.emb_l2
        self.emb_l2 = float(getattr(model, "emb_l2", 0.0) if emb_l2 is None else emb_l2)
        if self.emb_l2 < 0:
            raise ValueError(f"emb_l2 must be >= 0, got {self.emb_l2} (the model's emb_l2)")

    def configure_model(self) -> None:
        # Lightning calls this before every fit, validate and test: build only once.
        if self.model is None:
            self._attach(self._build_model())

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.model(dense, sparse)

    def regulariser(self) -> torch.Tensor:
        if self.emb_l2 == 0.0:
            return torch.zeros((), device=self.device)
        return self.emb_l2 / 2 * sum(w.pow(2).sum() for w in embedding_weights(self.model))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        dense, sparse, label = batch
        logits = self.model(dense, sparse)
        bce = F.binary_cross_entropy_with_logits(logits, label)
        loss = bce + self.regulariser()
        if self.finite_step(loss):  # else the backward runs but the update is dropped
            self.train_ne.update(torch.sigmoid(logits.detach()), label)
            self.log("train/loss", bce, prog_bar=True)
            self.log("train/ne", self.train_ne, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: Batch, metrics: MetricCollection) -> None:
        dense, sparse, label = batch
        metrics.update(torch.sigmoid(self.model(dense, sparse)), label.long())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def _param_groups(self) -> list[dict]:
        emb_ids = {id(w) for w in embedding_weights(self.model)}
        emb = [p for p in self.model.parameters() if id(p) in emb_ids]
        rest = [p for p in self.model.parameters() if id(p) not in emb_ids]
        groups: Iterable[dict] = (
            {"params": emb, "weight_decay": 0.0},
            {"params": rest, "weight_decay": self.hparams.weight_decay},
        )
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        # Lightning calls this after the strategy wrapped the model; under FSDP (with Lightning's
        # default use_orig_params=True) self.model's parameters are then the sharded ones.
        opt = torch.optim.Adam(self._param_groups(), lr=self.hparams.lr)
        if self.hparams.lr_plateau_factor is None:
            return opt
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=self.hparams.lr_plateau_factor, patience=0
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": "val/auc", "interval": "epoch"},
        }
