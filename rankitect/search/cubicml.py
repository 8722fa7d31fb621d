"""CubicML: the predictor and RL sampler of the sampling search tune the training system.

The searched settings (``tune.search`` of ``conf/tune_system.yaml``: batch size, intra-op
threads, DataLoader workers, precision, ``torch.compile``, activation checkpointing; GPU-only
ones declared with ``requires: gpu``) form a `SystemSpace`, a `DecisionSpace` of one
categorical decision per setting, so `NeuralPredictor`, `RLSampler` and `propose_random` work
on it unchanged. A trial trains the model a few dozen steps in a process of its own (forked
from a fork server that has imported torch and Lightning) and measures the steady-state
examples per second (warm-up steps excluded) and the peak memory; a trial over
``tune.memory_budget_mb`` or failing is infeasible. Rounds: ``initial`` random
configurations, then rounds of ``round_size`` proposed by the RL sampler on a predictor
refitted on every trial (cost: ``-log`` throughput; infeasible ones one e-fold worse than the
slowest feasible one), until ``trials`` are measured. See docs/system.md.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import multiprocessing
import os
import resource
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from rankitect.cli.entry import quiet_third_party
from rankitect.io import atomic_write_text, write_json
from rankitect.search.reinforce import seeded_generator
from rankitect.search.sampling.predictor import NeuralPredictor
from rankitect.search.sampling.proposers import RLSampler, one_thread, propose_random
from rankitect.search.sampling.store import arch_key
from rankitect.space.space import Decision, DecisionSpace
from rankitect.system import apply_threads, check_system, prepare_model
from rankitect.train import build_module, model_name, trainer_options, with_output_dir

log = logging.getLogger(__name__)

STRATEGIES = ("predictor", "random", "grid")
REQUIREMENTS = (None, "gpu")
OK, OVER_BUDGET, FAILED = "ok", "over_budget", "failed"


def render(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class Setting:
    """One tunable setting: the `rankitect-train` override ``key`` it writes, its ``options``,
    ``requires: gpu`` when it means nothing without one, and an optional ``template`` of the
    written value (``$value`` stands for the option, e.g. a strategy config)."""

    name: str
    key: str
    options: tuple[Any, ...]
    requires: str | None = None
    template: str | None = None

    def override(self, value: Any) -> str:
        text = render(value)
        if self.template is not None:
            text = string.Template(self.template).substitute(value=text)
        return f"{self.key}={text}"


def load_settings(
    declared: Mapping[str, Any],
    search: Mapping[str, Any],
    cuda: bool | None = None,
    key: str = "tune.search",
) -> list[Setting]:
    """The searched settings (``search``: name -> options; null options: not searched) from
    their declarations; a ValueError names ``<key>.<name>`` for an unknown setting, bad
    options, or a GPU-only setting on a machine without CUDA (``cuda``; default:
    ``torch.cuda.is_available()``)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    search = {name: options for name, options in search.items() if options is not None}
    if not search:
        raise ValueError(f"{key}: no setting to search")
    out, keys = [], {}
    for name, options in search.items():
        if name not in declared:
            raise ValueError(
                f"{key}.{name}: unknown system setting; known: {sorted(declared)} "
                "(declared under tune.settings)"
            )
        decl = dict(declared[name])
        unknown = set(decl) - {"key", "requires", "template"}
        if unknown or "key" not in decl:
            raise ValueError(
                f"tune.settings.{name}: takes key, requires and template; got {sorted(decl)}"
            )
        if decl.get("requires") not in REQUIREMENTS:
            raise ValueError(
                f"tune.settings.{name}.requires must be one of {REQUIREMENTS}, "
                f"got {decl['requires']!r}"
            )
        if decl.get("requires") == "gpu" and not cuda:
            raise ValueError(
                f"{key}.{name}: needs a GPU (tune.settings.{name}.requires: gpu) and "
                "torch.cuda is not available here; remove it from the search"
            )
        if isinstance(options, str | bytes) or not isinstance(options, Sequence) or not options:
            raise ValueError(f"{key}.{name}: expected a non-empty list of options, got {options!r}")
        options = tuple(options)
        if len({render(o) for o in options}) != len(options):
            raise ValueError(f"{key}.{name}: duplicate options {list(options)}")
        target = decl["key"].lstrip("+")
        if target in keys:
            raise ValueError(f"{key}.{name} and {key}.{keys[target]} both set {target}")
        keys[target] = name
        out.append(Setting(name, decl["key"], options, decl.get("requires"), decl.get("template")))
    return out


@dataclass(frozen=True)
class SystemConfig:
    """A point of a `SystemSpace`: ``(name, value)`` per searched setting, in search order."""

    items: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def describe(self) -> str:
        return " ".join(f"{k}={render(v)}" for k, v in self.items)


class SystemSpace(DecisionSpace):
    """One unconditional categorical decision per `Setting`, uniform prior; ``decode`` gives a
    `SystemConfig`. The decision interface the predictor and the RL sampler use."""

    def __init__(self, settings: Sequence[Setting]) -> None:
        self.settings = tuple(settings)
        self.decisions: tuple[Decision, ...] = tuple(
            Decision(
                name=s.name,
                choice=-1,
                kind="system",
                labels=s.options,
                prior=tuple(1.0 / len(s.options) for _ in s.options),
            )
            for s in self.settings
        )
        self.name = "system"

    @property
    def size(self) -> int:
        return math.prod(len(s.options) for s in self.settings)

    def decode(self, values: Sequence[int] | torch.Tensor) -> SystemConfig:
        vals = self.check_values(values)
        return SystemConfig(
            tuple((s.name, s.options[v]) for s, v in zip(self.settings, vals, strict=True))
        )

    def validate(self, config: SystemConfig) -> SystemConfig:
        names = [k for k, _ in config.items]
        if names != [s.name for s in self.settings]:
            raise ValueError(f"settings {names} are not the searched {self.names}")
        for s, (_, v) in zip(self.settings, config.items, strict=True):
            if render(v) not in [render(o) for o in s.options]:
                raise ValueError(f"{s.name}: {v!r} is not an option: {list(s.options)}")
        return config

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.settings]

    def values(self, config: SystemConfig) -> torch.Tensor:
        self.validate(config)
        return torch.tensor(
            [
                [render(o) for o in s.options].index(render(v))
                for s, (_, v) in zip(self.settings, config.items, strict=True)
            ],
            dtype=torch.long,
        )

    def grid(self) -> list[SystemConfig]:
        """Every configuration, in lexicographic order of the options."""
        cards = [range(len(s.options)) for s in self.settings]
        return [self.decode(list(v)) for v in itertools.product(*cards)]

    def overrides(self, config: SystemConfig) -> list[str]:
        """The `rankitect-train` overrides of ``config``, one per setting."""
        return [s.override(v) for s, (_, v) in zip(self.settings, config.items, strict=True)]


# ---- the search ---------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One measured configuration. ``status``: ``ok``, ``over_budget`` or ``failed``."""

    index: int
    round: int
    config: SystemConfig
    status: str
    examples_per_s: float | None = None
    memory_mb: float | None = None
    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.status == OK


def costs(records: Sequence[TrialRecord]) -> list[float]:
    """What the predictor learns (lower is better): ``-log`` examples per second. A trial over
    the memory budget keeps its measured speed, one e-fold worse (its neighbours with less
    memory may be the fastest feasible ones); a failed one costs one e-fold more than the
    slowest trial (all 0 when none ran)."""
    measured = [r for r in records if r.status != FAILED]
    worst = max((-math.log(r.examples_per_s) for r in measured), default=-1.0) + 1.0
    penalty = {OK: 0.0, OVER_BUDGET: 1.0}
    return [
        -math.log(r.examples_per_s) + penalty[r.status] if r.status in penalty else worst
        for r in records
    ]


Evaluate = Callable[[SystemConfig, int], Mapping[str, Any]]


def tune(
    space: SystemSpace,
    evaluate: Evaluate,
    *,
    strategy: str = "predictor",
    trials: int | None = None,
    initial: int = 8,
    round_size: int = 4,
    memory_budget_mb: float | None = None,
    predictor: Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    seed: int = 0,
    on_trial: Callable[[TrialRecord, int], None] | None = None,
) -> list[TrialRecord]:
    """Measure configurations of ``space`` with ``evaluate(config, index)`` (a mapping with
    ``examples_per_s`` and ``memory_mb``, or ``error``) and return every trial in order.

    ``strategy``: ``predictor`` (CubicML: random round, then predictor + RL sampler rounds),
    ``random`` (distinct random configurations) or ``grid`` (all of them). ``trials``: the
    number of evaluations (default 20% of the grid, at least ``initial + 1``; ``grid``: all).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"tune.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if initial < 2 or round_size < 1:
        raise ValueError("tune.initial must be >= 2 and tune.round_size >= 1")
    n = space.size if strategy == "grid" else default_trials(space, trials, initial)
    predictor_cfg, sampler_cfg = dict(predictor or {}), dict(sampler or {})
    records: list[TrialRecord] = []

    def run_trials(configs: list[SystemConfig], r: int) -> None:
        for config in configs[: n - len(records)]:
            start = time.perf_counter()
            m = dict(evaluate(config, len(records)))
            seconds = m.pop("seconds", time.perf_counter() - start)
            error = m.pop("error", None)
            tput, memory = m.pop("examples_per_s", None), m.pop("memory_mb", None)
            status = OK
            if error is not None or tput is None or not tput > 0:
                status, error = FAILED, error or "no throughput measured"
            elif memory_budget_mb is not None and memory > memory_budget_mb:
                status = OVER_BUDGET
            record = TrialRecord(len(records), r, config, status, tput, memory, seconds, error, m)
            records.append(record)
            if on_trial is not None:
                on_trial(record, n)

    if strategy == "grid":
        run_trials(space.grid(), 0)
        return records
    r = 0
    while len(records) < n and len(records) < space.size:
        exclude = {arch_key(t.config) for t in records}
        want = min(initial if r == 0 else round_size, n - len(records))
        proposed: list[SystemConfig] = []
        if strategy == "predictor" and r > 0:
            model = NeuralPredictor(space, seed=seed + r, **predictor_cfg)
            rl = RLSampler(space, seed=seed, **sampler_cfg)
            memory = [t.memory_mb for t in records if t.memory_mb]
            with one_thread():
                # the second head learns the peak memory (multi-task), as AutoML's learns its cost
                model.fit(
                    [t.config for t in records],
                    costs(records),
                    [t.memory_mb or max(memory, default=1.0) for t in records],
                )
                proposed = rl.propose(model, want, exclude, r)
        # a collapsed policy may propose fewer: top up with random new configurations
        exclude |= {arch_key(c) for c in proposed}
        gen = seeded_generator(seed, r)
        proposed += propose_random(space, want - len(proposed), exclude, gen)
        if not proposed:
            break
        run_trials(proposed, r)
        r += 1
    return records


def default_trials(space: SystemSpace, trials: int | None, initial: int) -> int:
    if trials is None:
        trials = max(space.size // 5, initial + 1)
    if trials < 1:
        raise ValueError(f"tune.trials must be >= 1, got {trials}")
    return min(int(trials), space.size)


def best_of(records: Sequence[TrialRecord]) -> TrialRecord | None:
    feasible = [t for t in records if t.feasible]
    return max(feasible, key=lambda t: t.examples_per_s) if feasible else None


# ---- one trial: a short training run in a fresh process ----------------------------------------


class Throughput(Callback):
    """Examples per second over the training batches after the first ``warmup`` (whose
    compilation, allocator growth and loader start-up are not the steady state), wall time
    from the end of the last warm-up batch to the end of the last batch (loading included).
    Stops the fit once ``seconds`` have been measured over at least ``min_steps`` batches, so
    a slow configuration costs seconds, not minutes."""

    def __init__(self, warmup: int, seconds: float = math.inf, min_steps: int = 3) -> None:
        self.warmup, self.seconds, self.min_steps = int(warmup), float(seconds), int(min_steps)
        self.batches = self.examples = 0
        self.start = self.end = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs, batch, idx) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.batches += 1
        if self.batches == self.warmup:
            self.start = now
        elif self.batches > self.warmup:
            self.examples += len(batch[-1])
            self.end = now
            measured = self.batches - self.warmup
            if measured >= self.min_steps and now - self.start >= self.seconds:
                trainer.should_stop = True

    @property
    def examples_per_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.examples / (self.end - self.start)


def measure(cfg: DictConfig, warmup: int, steps: int, seconds: float = math.inf) -> dict:
    """Train ``cfg`` (a `rankitect-train` config) for ``warmup`` batches, then ``steps`` more
    or ``seconds`` of them (whichever ends first), without validation, checkpoints or logger:
    steady-state examples per second and peak memory (the process's maximum resident set in
    MiB; on a GPU the allocator's peak)."""
    L.seed_everything(cfg.seed, workers=True)
    system = check_system(cfg.get("system"))
    apply_threads(system)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = prepare_model(system, instantiate(cfg.model)(spec=datamodule.feature_spec))
    meter = Throughput(warmup, seconds, min(3, steps))
    options = {
        **trainer_options(cfg.trainer),
        "max_epochs": -1,
        "max_steps": warmup + steps,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trainer = L.Trainer(**options, logger=False, callbacks=[meter])
    start = time.perf_counter()
    # no validation: no plateau to cut the learning rate on (its scheduler would need one)
    module = build_module(cfg, model, lr_plateau_factor=None)
    trainer.fit(module, datamodule=datamodule)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        else None
    )
    return {
        "examples_per_s": meter.examples_per_s,
        "measured_steps": meter.batches - warmup,
        "memory_mb": gpu_mb if gpu_mb is not None else rss_mb,
        "peak_rss_mb": rss_mb,
        "peak_gpu_mb": gpu_mb,
        "threads": torch.get_num_threads(),
        "fit_seconds": time.perf_counter() - start,
    }


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A copy of ``cfg`` with Hydra overrides ``key=value`` applied (parsed by Hydra's own
    grammar, so a trial trains exactly what the written override makes `rankitect-train` do)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        OmegaConf.update(out, override.key_or_group, override.value(), merge=False, force_add=True)
    return out


def _trial_process(
    config: str, result: str, warmup: int, steps: int, seconds: float, log_file: str
) -> None:
    """The body of a trial process: its output into ``log_file``, its measurement into
    ``result`` (JSON)."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    quiet_third_party()
    write_json(result, measure(OmegaConf.load(config), warmup, steps, seconds))


class ProcessTrial:
    """``evaluate`` of `tune`: each configuration trains in a process of its own (its peak
    memory, torch threads and compile caches its own), forked from a fork server that has
    imported torch and Lightning once (a fresh interpreter spends seconds on imports alone),
    its config, log and result under ``<run dir>/trials/<index>/``."""

    def __init__(
        self,
        space: SystemSpace,
        base: DictConfig,
        run_dir: Path,
        warmup_steps: int,
        measure_steps: int,
        measure_seconds: float | None,
        timeout_s: float,
    ) -> None:
        if warmup_steps < 1 or measure_steps < 1:
            raise ValueError("tune.warmup_steps and tune.measure_steps must be >= 1")
        self.space, self.base, self.run_dir = space, base, Path(run_dir)
        self.warmup, self.steps, self.timeout = int(warmup_steps), int(measure_steps), timeout_s
        self.seconds = math.inf if measure_seconds is None else float(measure_seconds)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([__name__])

    def __call__(self, config: SystemConfig, index: int) -> dict[str, Any]:
        trial_dir = self.run_dir / "trials" / str(index)
        trial_dir.mkdir(parents=True, exist_ok=True)
        cfg = apply_overrides(self.base, self.space.overrides(config))
        atomic_write_text(trial_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        result, log_file = trial_dir / "result.json", trial_dir / "log.txt"
        args = (str(trial_dir / "config.yaml"), str(result), self.warmup, self.steps,
                self.seconds, str(log_file))  # fmt: skip
        start = time.perf_counter()
        process = self.context.Process(target=_trial_process, args=args)
        process.start()
        process.join(self.timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            return {"error": f"timed out after {self.timeout:g} s (tune.trial_timeout_s)"}
        seconds = time.perf_counter() - start
        if process.exitcode != 0 or not result.is_file():
            lines = log_file.read_text().strip().splitlines() if log_file.is_file() else []
            return {"error": lines[-1] if lines else f"exit status {process.exitcode}"}
        return {**json.loads(result.read_text()), "seconds": seconds}


# ---- what a run writes -----------------------------------------------------------------------


def write_outputs(
    run_dir: Path,
    space: SystemSpace,
    records: Sequence[TrialRecord],
    info: Mapping[str, Any],
    command_prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """``trials.csv``, ``best_overrides.txt`` (one override per line) and ``results.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    columns = ["trial", "round", *space.names, "status", "examples_per_s", "memory_mb",
               "seconds", "error"]  # fmt: skip
    with open(run_dir / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for t in records:
            writer.writerow(
                [t.index, t.round, *[render(v) for _, v in t.config.items], t.status,
                 _round(t.examples_per_s), _round(t.memory_mb), _round(t.seconds), t.error or ""]
            )  # fmt: skip
    best = best_of(records)
    results: dict[str, Any] = {
        **info,
        "grid_size": space.size,
        "evaluated": len(records),
        "settings": {s.name: {"key": s.key, "options": list(s.options)} for s in space.settings},
        "best": None,
        "trials": [
            {
                "trial": t.index,
                "round": t.round,
                "settings": t.config.to_dict(),
                "status": t.status,
                "examples_per_s": t.examples_per_s,
                "memory_mb": t.memory_mb,
                "seconds": t.seconds,
                "error": t.error,
                **t.extra,
            }
            for t in records
        ],
    }
    if best is not None:
        overrides = space.overrides(best.config)
        atomic_write_text(run_dir / "best_overrides.txt", "\n".join(overrides) + "\n")
        results["best"] = {
            "trial": best.index,
            "settings": best.config.to_dict(),
            "examples_per_s": best.examples_per_s,
            "memory_mb": best.memory_mb,
            "overrides": overrides,
            "command": " ".join(["rankitect-train", *command_prefix, *overrides]),
        }
    write_json(run_dir / "results.json", results)
    return results


def run(cfg: DictConfig, output_dir: str | Path, task_overrides: Sequence[str] = ()) -> dict:
    """The body of `rankitect-tune-system`: search ``cfg.tune`` for ``cfg``'s model and data."""
    output_dir = Path(output_dir)
    t = cfg.tune
    space = SystemSpace(
        load_settings(OmegaConf.to_container(t.settings), OmegaConf.to_container(t.search))
    )
    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("tune", "hydra")])
    base = with_output_dir(base, output_dir)
    check_system(base.get("system"))
    evaluate = ProcessTrial(
        space, base, output_dir, t.warmup_steps, t.measure_steps, t.measure_seconds,
        float(t.trial_timeout_s),
    )  # fmt: skip
    log.info(
        "tuning %d settings (%d configurations) of %s, strategy %s, %d trials",
        len(space.settings),
        space.size,
        model_name(base),
        t.strategy,
        space.size if t.strategy == "grid" else default_trials(space, t.trials, t.initial),
    )

    def progress(record: TrialRecord, n: int) -> None:
        what = {
            OK: f"{record.examples_per_s:,.0f} examples/s, {record.memory_mb:,.0f} MiB",
            OVER_BUDGET: f"{record.memory_mb:,.0f} MiB: over tune.memory_budget_mb",
            FAILED: f"failed: {record.error}",
        }[record.status]
        log.info("trial %d/%d (round %d): %s: %s", record.index + 1, n, record.round,
                 record.config.describe(), what)  # fmt: skip

    records = tune(
        space,
        evaluate,
        strategy=t.strategy,
        trials=t.trials,
        initial=t.initial,
        round_size=t.round_size,
        memory_budget_mb=t.memory_budget_mb,
        predictor=OmegaConf.to_container(t.predictor),
        sampler=OmegaConf.to_container(t.sampler),
        seed=t.seed,
        on_trial=progress,
    )
    searched = {s.key.lstrip("+") for s in space.settings}
    prefix = [
        o for o in task_overrides
        if not o.lstrip("+~").startswith(("tune.", "hydra.")) and o.lstrip("+~").split("=")[0]
        not in searched
    ]  # fmt: skip
    info = {
        "model": model_name(base),
        "strategy": t.strategy,
        "memory_budget_mb": t.memory_budget_mb,
        "warmup_steps": t.warmup_steps,
        "measure_steps": t.measure_steps,
        "measure_seconds": t.measure_seconds,
    }
    results = write_outputs(output_dir, space, records, info, prefix)
    best = results["best"]
    if best is None:
        log.warning("no feasible configuration among %d trials; see trials.csv", len(records))
    else:
        log.info(
            "best: %s: %.0f examples/s, %.0f MiB (trial %d of %d); wrote %s; train with:\n  %s",
            SystemConfig(tuple(best["settings"].items())).describe(),
            best["examples_per_s"],
            best["memory_mb"],
            best["trial"] + 1,
            len(records),
            output_dir / "best_overrides.txt",
            best["command"],
        )
    return results


def _round(x: float | None) -> float | str:
    return "" if x is None else round(float(x), 1)
