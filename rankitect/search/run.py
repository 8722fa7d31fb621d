"""Run one architecture search from a composed config; the body of `rankitect-search`."""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from omegaconf import DictConfig, OmegaConf

from rankitect.checkpoint import AtomicCheckpointIO, resolve_resume
from rankitect.search.method import SearchMethod
from rankitect.search.outcome import write_search_results
from rankitect.space import load_space
from rankitect.train import (
    FitProgress,
    build_logger,
    finish_logger,
    fit_progress,
    refuse_relaunch_in_multirun,
)

log = logging.getLogger(__name__)


def trainer_options(cfg: DictConfig, module: L.LightningModule) -> dict[str, Any]:
    """``cfg.trainer``, with a DDP strategy switched to its ``find_unused_parameters`` variant
    when the module leaves parameters without gradients at every step (a hard-masked supernet).

    Plain DDP would fail at the second step (its reducer waits for every parameter's gradient);
    with the variant, each step's gradients are averaged over the ranks, a parameter unused on a
    rank counting as zero there.
    """
    options = dict(cfg.trainer)
    strategy = options.get("strategy")
    if getattr(module, "leaves_unused_parameters", False) and isinstance(strategy, str):
        variant = f"{strategy}_find_unused_parameters_true"
        if variant in StrategyRegistry:
            log.info(
                "trainer.strategy=%s -> %s: the supernet leaves parameters unused",
                strategy,
                variant,
            )
            options["strategy"] = variant
    return options


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (workers
    of a sampling search, spawned DDP ranks): a search's cost on a CPU, unlike its wall time,
    does not depend on what else the machine runs."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
        **trainer_options(cfg, module),
        logger=logger,
        callbacks=[*callbacks, checkpoint, FitProgress()],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )
    refuse_relaunch_in_multirun(trainer)
    if isinstance(trainer.strategy, FSDPStrategy):
        # The search reads its architecture parameters outside the forward pass (policy
        # sampling in callbacks, the most likely architecture at validation), where FSDP holds
        # only this rank's shard of them.
        raise ValueError(
            "trainer.strategy=fsdp is not supported by rankitect-search: use trainer=ddp "
            "(see docs/distributed.md)"
        )
    start, cpu_start = time.perf_counter(), cpu_seconds()
    resume = resolve_resume(cfg.get("resume"), output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    outcome = method.outcome(module, callbacks)
    # Every rank holds the same search state; the digest in each rank's log shows it.
    log.info(
        "rank %d found architecture %s (%d FLOPs)",
        trainer.global_rank,
        hashlib.sha1(outcome.arch.to_json().encode()).hexdigest()[:12],
        space.flops(outcome.arch),
    )
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "search_cpu_seconds": round(cpu_seconds() - cpu_start, 2),
        "steps": fit_progress(trainer)[0],
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
    start, cpu_start = time.perf_counter(), cpu_seconds()
    outcome = method.run(space, datamodule, cfg, output_dir)
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "search_cpu_seconds": round(cpu_seconds() - cpu_start, 2),
        "seed": int(cfg.seed),
        "space_log10_size": round(space.log10_size, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results = write_search_results(output_dir, space, outcome, method.name, meta)
    log.info("found %s FLOPs architecture; wrote %s", results["flops"], output_dir)
    return results
