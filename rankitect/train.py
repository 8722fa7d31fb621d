"""Train one CTR model from a composed config; the body of `rankitect-train`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from rankitect.io import write_json
from rankitect.lit import CTRModule

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig | None, output_dir: Path):
    """The experiment logger of ``cfg.logger`` writing under ``output_dir``; False for none."""
    if cfg is None:
        return False
    return instantiate(cfg, save_dir=str(output_dir))


def finish_logger(logger) -> None:
    """Close a wandb run so the next job of a multirun starts a fresh one."""
    experiment = getattr(logger, "_experiment", None)
    if experiment is not None and hasattr(experiment, "finish"):
        experiment.finish()


def model_name(cfg: DictConfig) -> str:
    if cfg.get("name"):
        return str(cfg.name)
    if cfg.model.get("arch_file"):
        return f"arch:{Path(cfg.model.arch_file).stem}"
    return str(cfg.model._target_).rsplit(".", 1)[-1].lower()


def metrics_of(result: list[dict[str, float]], prefix: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(v) for k, v in result[0].items() if k.startswith(prefix)}


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data``, test the best checkpoint, write ``results.json``."""
    output_dir = Path(output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model)(spec=datamodule.feature_spec)
    module = CTRModule(model, **cfg.module)

    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints", monitor="val/auc", mode="max", save_last=True
    )
    early_stop = EarlyStopping(monitor="val/auc", mode="max", patience=cfg.early_stopping.patience)
    logger = build_logger(cfg.get("logger"), output_dir)
    trainer = L.Trainer(
        **cfg.trainer,
        logger=logger,
        callbacks=[checkpoint, early_stop],
        default_root_dir=str(output_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    val = trainer.validate(module, datamodule=datamodule, ckpt_path="best", verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)

    results = {
        "model": model_name(cfg),
        "flops": int(model.flops()),
        "params": int(model.num_params()),
        "val": metrics_of(val, "val/"),
        "test": metrics_of(test, "test/"),
        "epochs": trainer.current_epoch,
        "best_epoch_checkpoint": checkpoint.best_model_path,
        "fit_seconds": round(fit_seconds, 2),
        "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if getattr(datamodule.split("val"), "prob", None) is not None:
        results["bayes_ne"] = {s: float(datamodule.bayes_ne(s)) for s in ("val", "test")}
    if trainer.is_global_zero:
        path = write_json(output_dir / "results.json", results)
        log.info("wrote %s: val NE %.4f, test AUC %.4f", path, results["val"]["ne"],
                 results["test"]["auc"])
    finish_logger(logger)
    return results
