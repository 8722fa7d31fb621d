"""Train one CTR model from a composed config; the body of `rankitect-train`."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from rankitect.callbacks.progress import with_progress
from rankitect.checkpoint import AtomicCheckpointIO, resolve_resume
from rankitect.cli.config import conf_dir
from rankitect.io import write_json
from rankitect.lit import CTRModule
from rankitect.system import apply_threads, check_system, prepare_model

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig | None, output_dir: Path, config: dict[str, Any] | None = None):
    """The experiment logger of ``cfg.logger`` writing under ``output_dir``; False for none.
    ``config`` (the run's resolved config) is logged as its hyper-parameters, so that the run
    in wandb, TensorBoard or the CSV logger's hparams.yaml says what made it."""
    if cfg is None:
        return False
    logger = instantiate(cfg, save_dir=str(output_dir))
    if config is not None:
        logger.log_hyperparams(config)
    return logger


# What a wandb run keeps of the run directory: the results and the found architecture.
RUN_FILES = ("results.json", "best_arch.json")


def finish_logger(logger, output_dir: Path | None = None) -> None:
    """Close a wandb run so the next job of a multirun starts a fresh one, after saving the
    `RUN_FILES` of ``output_dir`` with it and the FLOPs, parameters and architecture of its
    ``results.json`` in its summary."""
    experiment = getattr(logger, "_experiment", None)
    if experiment is None or not hasattr(experiment, "finish"):
        return
    if output_dir is not None:
        files = [Path(output_dir) / name for name in RUN_FILES]
        for path in filter(Path.is_file, files):
            experiment.save(str(path), base_path=str(path.parent), policy="now")
        if files[0].is_file():
            results = json.loads(files[0].read_text())
            summary = {k: results[k] for k in ("model", "flops", "params", "arch") if k in results}
            experiment.summary.update(summary)
    experiment.finish()


def model_name(cfg: DictConfig) -> str:
    if cfg.get("name"):
        return str(cfg.name)
    if cfg.model.get("arch_file"):
        return f"arch:{Path(cfg.model.arch_file).stem}"
    return str(cfg.model._target_).rsplit(".", 1)[-1].lower()


def dense_params(model: nn.Module) -> int:
    """Parameters outside embedding tables (the paper's "dense parameters")."""
    return sum(
        p.numel()
        for m in model.modules()
        if not isinstance(m, nn.Embedding)
        for p in m.parameters(recurse=False)
    )


def refuse_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """Fail before fitting when the strategy would re-run a Hydra multirun in every rank.

    Lightning's ``ddp`` and ``fsdp`` start the other ranks by re-running the command line, which
    under ``-m`` is the whole sweep: each child would run every job again. ``ddp_spawn`` starts
    its ranks in-process, and an external launcher (torchrun, SLURM) starts no children.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = trainer.strategy.launcher
    # No children with one process per machine, or when torchrun/SLURM started the ranks.
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    ):
        raise ValueError(
            f"trainer.strategy ({type(trainer.strategy).__name__}) re-launches the script for "
            "every rank, which under a Hydra multirun (-m) would re-run the whole sweep in each "
            "child: use trainer=ddp_spawn for sweeps, or start the ranks with torchrun "
            "(see docs/distributed.md)"
        )


class FitProgress(Callback):
    """Copies the fit's step and epoch counts into ``trainer.callback_metrics``, the only trainer
    state that ``ddp_spawn`` sends back to the main process (whose own counters stay at 0).
    At the fit's end, not the training's: a fit resumed from a finished run's checkpoint skips
    training (and ``on_train_end``) but still ends, with the restored counts."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.callback_metrics["fit/steps"] = torch.tensor(trainer.global_step)
        trainer.callback_metrics["fit/epochs"] = torch.tensor(trainer.current_epoch)


def group_config(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` as Hydra composes it, for configs built outside a Hydra run
    (the final stage's retrains): its defaults list may name configs of the same group only
    (as ``conf/callbacks/default.yaml`` does)."""
    cfg = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    defaults = list(cfg.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    out = OmegaConf.create()
    for entry in defaults:
        out = OmegaConf.merge(out, cfg if entry == "_self_" else group_config(group, entry))
    return out


# Moved into the callbacks group (conf/callbacks/early_stopping.yaml).
RENAMED = {"early_stopping": "callbacks.early_stopping (e.g. callbacks.early_stopping.patience)"}


def with_output_dir(cfg: DictConfig, output_dir: Path, callbacks: str = "default") -> DictConfig:
    """A copy of ``cfg`` with ``paths.output_dir`` the run directory the run writes to, so that
    ``${paths.output_dir}`` (the checkpoints' ``dirpath``) resolves in-process and in the
    final stage's retrains as in a Hydra run. A config without ``callbacks`` (written by hand,
    or by an older version) gets ``conf/callbacks/<callbacks>.yaml``; a key of an older config
    that has moved is an error saying where it went."""
    for old, new in RENAMED.items():
        if old in cfg:
            raise ValueError(f"config key {old!r} has moved to {new}: see docs/training.md")
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        OmegaConf.update(cfg, "paths.output_dir", str(output_dir), force_add=True)
        if "callbacks" not in cfg:
            cfg.callbacks = group_config("callbacks", callbacks)
    return cfg


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of ``cfg`` (``cfg.callbacks``: name -> a config with ``_target_``), built
    with `hydra.utils.instantiate`; an entry set to null is skipped."""
    callbacks = []
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(
                f"callbacks.{name}: a callback config needs a _target_ (a Callback class or a "
                f"function returning one), got {entry!r}"
            )
        callback = instantiate(entry)
        if not isinstance(callback, Callback):
            raise ValueError(
                f"callbacks.{name}: {entry._target_} built a {type(callback).__name__}, "
                "not a lightning Callback"
            )
        callbacks.append(callback)
    return callbacks


def build_module(cfg: DictConfig, model: Any, **overrides: Any) -> L.LightningModule:
    """``cfg.module`` (``conf/module/ctr.yaml``: a `CTRModule` partial) called with ``model``;
    a ``module`` block without ``_target_`` (an older config) gives its keys to `CTRModule`."""
    node = cfg.module
    if "_target_" not in node:
        return CTRModule(model, **{**node, **overrides})
    return instantiate(node, **overrides)(model)


def fit_progress(trainer: L.Trainer) -> tuple[int, int]:
    """``(global steps, epochs)`` of the last fit, also after ``ddp_spawn`` (see `FitProgress`)."""
    metrics = trainer.callback_metrics
    return int(metrics["fit/steps"]), int(metrics["fit/epochs"])


def metrics_of(result: list[dict[str, float]], prefix: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(v) for k, v in result[0].items() if k.startswith(prefix)}


def trainer_options(trainer: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as `lightning.Trainer` keyword arguments; a ``strategy`` given as a
    config with ``_target_`` (e.g. a DDPStrategy with its ``bucket_cap_mb``) is built."""
    options = dict(trainer)
    strategy = options.get("strategy")
    if isinstance(strategy, DictConfig) and "_target_" in strategy:
        options["strategy"] = instantiate(strategy)
    return options


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data``, test the best checkpoint, write ``results.json``."""
    output_dir = Path(output_dir)
    cfg = with_output_dir(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    system = check_system(cfg.get("system"))
    apply_threads(system)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_config = instantiate(cfg.model)
    logger = build_logger(cfg.get("logger"), output_dir, OmegaConf.to_container(cfg, resolve=True))
    # cfg.callbacks (conf/callbacks/default.yaml: checkpoint, early stopping, progress), and
    # FitProgress, built here: fit_progress reads what it records, under any callbacks config.
    callbacks = [*build_callbacks(cfg), FitProgress()]
    options, callbacks = with_progress(trainer_options(cfg.trainer), callbacks)
    trainer = L.Trainer(
        **options,
        logger=logger,
        callbacks=callbacks,
        # AtomicCheckpointIO: a checkpoint is never left half-written (resume needs a whole one)
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )
    refuse_relaunch_in_multirun(trainer)
    # the checkpoint whose best epoch is tested (the first that monitors a metric); none: the
    # last weights are
    checkpoint = next(
        (c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None
    )

    def build_model() -> nn.Module:
        return prepare_model(system, model_config(spec=datamodule.feature_spec))

    model = build_model()
    if isinstance(trainer.strategy, FSDPStrategy):
        # FSDP builds the model in CTRModule.configure_model, on the device and under its
        # sharding context; `model` stays a host copy for FLOPs and the parameter count. Other
        # strategies take the built model: ddp_spawn loads the workers' weights back into this
        # process's module, which must already hold it.
        module = build_module(cfg, build_model)
    else:
        module = build_module(cfg, model)
    start = time.perf_counter()
    resume = resolve_resume(cfg.get("resume"), output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    fit_seconds = time.perf_counter() - start
    steps, epochs = fit_progress(trainer)
    best = {"ckpt_path": "best" if checkpoint else None, "weights_only": True, "verbose": False}
    val = trainer.validate(module, datamodule=datamodule, **best)
    test = trainer.test(module, datamodule=datamodule, **best)

    results = {
        "model": model_name(cfg),
        "flops": int(model.flops()),
        "params": int(model.num_params()),
        "dense_params": dense_params(model),
        "val": metrics_of(val, "val/"),
        "test": metrics_of(test, "test/"),
        "epochs": epochs,
        "steps": steps,
        "best_epoch_checkpoint": checkpoint.best_model_path if checkpoint else None,
        "fit_seconds": round(fit_seconds, 2),
        "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if getattr(datamodule.split("val"), "prob", None) is not None:
        results["bayes_ne"] = {s: float(datamodule.bayes_ne(s)) for s in ("val", "test")}
    if trainer.is_global_zero:
        path = write_json(output_dir / "results.json", results)
        log.info(
            "wrote %s: val NE %.4f, test AUC %.4f",
            path,
            results["val"]["ne"],
            results["test"]["auc"],
        )
    finish_logger(logger, output_dir)
    return results
