"""Run one architecture search from a composed config; the body of `rankitect-search`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from rankitect.search.method import SearchMethod
from rankitect.search.outcome import write_search_results
from rankitect.space import load_space
from rankitect.train import build_logger, finish_logger

log = logging.getLogger(__name__)


def search(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Fit ``cfg.method`` on ``cfg.data`` in ``cfg.search_space``; write the found architecture."""
    output_dir = Path(output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    space_cfg = OmegaConf.to_container(cfg.search_space, resolve=True)
    space = load_space(space_cfg, datamodule.feature_spec)
    log.info("search space: %r", space)
    method: SearchMethod = instantiate(cfg.method)
    if callable(getattr(method, "run", None)):
        return _run_method(method, space, datamodule, cfg, output_dir)
    module, callbacks = method.build(space)
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
    )
    logger = build_logger(cfg.get("logger"), output_dir)
    trainer = L.Trainer(
        **cfg.trainer,
        logger=logger,
        callbacks=[*callbacks, checkpoint],
        default_root_dir=str(output_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"))
    outcome = method.outcome(module, callbacks)
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "steps": trainer.global_step,
        "seed": int(cfg.seed),
        "space_log10_size": round(space.log10_size, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results = {}
    if trainer.is_global_zero:
        results = write_search_results(output_dir, space, outcome, method.name, meta)
        log.info("found %s FLOPs architecture; wrote %s", results["flops"], output_dir)
    finish_logger(logger)
    return results


def _run_method(
    method: Any, space: Any, datamodule: Any, cfg: DictConfig, output_dir: Path
) -> dict[str, Any]:
    """A method that is not one Lightning fit (sampling-based search) runs itself:
    ``method.run(space, datamodule, cfg, output_dir) -> SearchOutcome``."""
    start = time.perf_counter()
    outcome = method.run(space, datamodule, cfg, output_dir)
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "seed": int(cfg.seed),
        "space_log10_size": round(space.log10_size, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results = write_search_results(output_dir, space, outcome, method.name, meta)
    log.info("found %s FLOPs architecture; wrote %s", results["flops"], output_dir)
    return results
