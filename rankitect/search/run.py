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
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from omegaconf import DictConfig, OmegaConf

from rankitect.callbacks.progress import with_progress
from rankitect.checkpoint import AtomicCheckpointIO, resolve_resume
from rankitect.io import write_json
from rankitect.loggers import log_search_artifact
from rankitect.search.finalize import FinalConfig, comparison_lines, final_comparison, finalize
from rankitect.search.method import SearchMethod
from rankitect.search.outcome import SearchOutcome, plot_final, write_search_results
from rankitect.search.sanity import comparison, target_flops_of, unreachable_target, unsearched
from rankitect.space import load_space
from rankitect.train import (
    FitProgress,
    build_callbacks,
    build_logger,
    finish_logger,
    fit_progress,
    refuse_relaunch_in_multirun,
    with_output_dir,
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
    cfg = with_output_dir(cfg, output_dir, callbacks="search")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    space_cfg = OmegaConf.to_container(cfg.search_space, resolve=True)
    space = load_space(space_cfg, datamodule.feature_spec)
    log.info("search space: %r", space)
    method: SearchMethod = instantiate(cfg.method)
    warnings = [w for w in [unreachable_target(space, target_flops_of(cfg.method))] if w]
    for warning in warnings:
        log.warning(warning)
    if callable(getattr(method, "run", None)):
        return _run_method(method, space, datamodule, cfg, output_dir, warnings)
    module, callbacks = method.build(space)
    logger = build_logger(cfg.get("logger"), output_dir, OmegaConf.to_container(cfg, resolve=True))
    # The method's callbacks run the search (conf/callbacks/method/); cfg.callbacks
    # (conf/callbacks/search.yaml: the search state's checkpoint, progress) come next, and
    # FitProgress, built here: fit_progress reads what it records, under any callbacks config.
    options, fit_callbacks = with_progress(
        trainer_options(cfg, module), [*callbacks, *build_callbacks(cfg), FitProgress()]
    )
    trainer = L.Trainer(
        **options,
        logger=logger,
        callbacks=fit_callbacks,
        # AtomicCheckpointIO: a checkpoint is never left half-written (resume needs a whole one)
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
    steps = fit_progress(trainer)[0]
    warnings += [w for w in [unsearched(outcome.extra, steps)] if w]
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "search_cpu_seconds": round(cpu_seconds() - cpu_start, 2),
        "steps": steps,
        "seed": int(cfg.seed),
        "space_log10_size": round(space.log10_size, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "warnings": warnings,
    }
    results = {}
    if trainer.is_global_zero:
        results = write_and_finalize(cfg, space, outcome, method.name, meta, datamodule, output_dir)
        log_search_artifact(logger, output_dir, final_comparison(results))
    finish_logger(logger, output_dir)
    return results


def log_found(results: dict[str, Any], output_dir: Path) -> None:
    """The run's last log lines: what was found, how it compares, how to retrain it, and again
    every warning about what the result means."""
    target = results.get("target_flops")
    log.info(
        "the search's own pick: a %s-FLOPs architecture%s: %s; wrote %s",
        f"{results['flops']:,}",
        "" if target is None else f" (target {target:,.0f})",
        comparison(results),
        output_dir,
    )
    # AutoML writes its own overrides: the architecture's space and the found hyper-parameters.
    overrides = output_dir / "retrain_overrides.txt"
    retrain = (
        " ".join(overrides.read_text().split())
        if overrides.is_file()
        else f"model=arch model.space={results['space']} "
        f"model.arch_file={output_dir / 'best_arch.json'}"
    )
    if "final" in results:  # retrained and compared already: say how it compares, last
        for line in comparison_lines(results["final"], results.get("baselines", {})):
            log.info(line)
    else:
        log.info("retrain it from scratch to compare trained models: rankitect-train %s", retrain)
    for warning in results.get("warnings", []):
        log.warning(warning)


def _run_method(
    method: Any,
    space: Any,
    datamodule: Any,
    cfg: DictConfig,
    output_dir: Path,
    warnings: list[str],
) -> dict[str, Any]:
    """A method that is not one Lightning fit (sampling-based search) runs itself:
    ``method.run(space, datamodule, cfg, output_dir) -> SearchOutcome``. Its logger records
    the config and, at the end, what a fit's does (no training curves)."""
    logger = build_logger(cfg.get("logger"), output_dir, OmegaConf.to_container(cfg, resolve=True))
    start, cpu_start = time.perf_counter(), cpu_seconds()
    outcome = method.run(space, datamodule, cfg, output_dir)
    meta = {
        "search_seconds": round(time.perf_counter() - start, 2),
        "search_cpu_seconds": round(cpu_seconds() - cpu_start, 2),
        "seed": int(cfg.seed),
        "space_log10_size": round(space.log10_size, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "warnings": warnings,
    }
    results = write_and_finalize(cfg, space, outcome, method.name, meta, datamodule, output_dir)
    if logger:
        logger.finalize("success")  # a trainer would: the CSV logger writes its files here
        log_search_artifact(logger, output_dir, final_comparison(results))
    finish_logger(logger, output_dir)
    return results


def search_target(cfg: DictConfig, space: Any, outcome: SearchOutcome) -> float | None:
    """The FLOPs target of a search: the method's resolved one, else its configured one
    (`target_flops_of`), else the seed architecture's FLOPs (None without a seed)."""
    if outcome.extra.get("target_flops") is not None:
        return float(outcome.extra["target_flops"])
    configured = target_flops_of(cfg.method)
    if configured is not None:
        return configured[1]
    return float(space.flops(space.seed_arch())) if getattr(space, "has_seed", False) else None


def write_and_finalize(
    cfg: DictConfig,
    space: Any,
    outcome: SearchOutcome,
    method: str,
    meta: dict[str, Any],
    datamodule: Any,
    output_dir: Path,
) -> dict[str, Any]:
    """``best_arch.json`` and ``results.json`` of the search, then, unless ``final=none``, the
    finalists retrained and compared with the baselines (`finalize`); the last log lines say
    how the result compares."""
    target = search_target(cfg, space, outcome)
    results = write_search_results(
        output_dir, space, outcome, method, {**meta, "target_flops": target}
    )
    if FinalConfig.from_config(cfg.get("final")).enabled:
        results.update(finalize(cfg, space, outcome, datamodule, output_dir, target))
        write_json(output_dir / "results.json", results)
        plot_final(output_dir / "final.png", results)
    log_found(results, output_dir)
    return results
