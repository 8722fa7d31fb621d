"""A trial worker: claim a queued trial from the store, or ask the search's sampler for a new
one, evaluate it, write its metrics; repeat.

Workers share nothing but the store. Each builds the data, the search space, the evaluator and
the sampler from the config the proposer saved in the store, so one command starts a worker
anywhere the store (and the data) can be reached::

    rankitect-worker --store sqlite:///outputs/search/.../trials.db
    python -m rankitect.search.sampling --store ...    # the same

A worker exits when the proposer has marked the search finished and no trial is queued (saying
so), at once when the store is finished already, with status 2 when an SQLite store does not
exist. A worker the search started itself (``parent_pid``) also exits when the search's process
ends, even when that process is killed.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch
from hydra.utils import get_class, instantiate

from rankitect.cli.entry import console_script
from rankitect.search.sampling.evaluators import Evaluator
from rankitect.search.sampling.samplers import (
    SAMPLE_INDEX,
    PredictorRLSampler,
    SamplingPlan,
    is_fresh,
    sample_index,
    suggest_arch,
)
from rankitect.search.sampling.store import QUEUED, Trial, TrialStore, arch_key
from rankitect.space import load_space
from rankitect.space.space import SearchSpace

log = logging.getLogger(__name__)

CONFIG_KEY = "config"
STATE_KEY = "state"  # "running" while the proposer works, "finished" afterwards
# The number of trials to sample (SamplingPlan.trials; the other fields are in the bound
# config: a restart may run more rounds, not other ones). Absent: nothing is sampled (AutoML).
TRIALS_KEY = "sampled_trials"


def build_sampler(config: dict[str, Any], space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a stored search config (``method.sampler``), given the space and,
    for `PredictorRLSampler`, the rounds and predictor settings."""
    options = dict(config["sampler"])
    if issubclass(get_class(options["_target_"]), PredictorRLSampler):
        return instantiate(
            options,
            space=space,
            plan={**config["plan"], "trials": 0},  # the sampler needs the rounds only
            predictor=config["predictor"],
            seed=config["seed"],
            _convert_="all",
        )
    return instantiate(options)


@dataclass
class Context:
    """What a worker needs besides the store: built once from the stored config."""

    space: SearchSpace
    evaluator: Evaluator
    config: dict[str, Any]
    sampler: optuna.samplers.BaseSampler | None = None


def build_context(config: dict[str, Any]) -> Context:
    """The search space, evaluator and sampler described by a stored search config."""
    datamodule = instantiate(config["data"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    space = load_space(config["search_space"], datamodule.feature_spec)
    evaluator = instantiate(config["evaluator"], space=space, datamodule=datamodule)
    sampler = build_sampler(config, space) if config.get("sampler") else None
    return Context(space, evaluator, config, sampler)


class _Heartbeat(threading.Thread):
    """Refreshes a running trial's heartbeat every ``every_s`` seconds until stopped."""

    def __init__(self, store: TrialStore, token: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.store, self.token, self.every_s = store, token, every_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                held = self.store.heartbeat_token(self.token)
            except Exception:  # a lost store connection: the trial will go stale
                log.exception("heartbeat of trial %d failed", self.token)
                held = False
            if not held:
                log.warning("lost trial %d (failed as stale and retried)", self.token)
                return


def _exit_with_parent(parent_pid: int, every_s: float) -> None:
    """End this process once ``parent_pid`` is no longer its parent (the parent died, even by
    SIGKILL, and the process was re-parented). ``os._exit``: the main thread may be deep in a
    trial, whose stale heartbeat then re-queues it for another worker."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        log.warning("the search process %d ended; worker %d exits", parent_pid, os.getpid())
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def missing_sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite ``url`` when it does not exist (opening it would create
    an empty store, which no search ever fills)."""
    if url.startswith("journal://"):
        path = Path(url[len("journal://") :])
        return None if path.exists() else path
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_trial(store: TrialStore, evaluator: Evaluator, trial: Trial, heartbeat_s: float) -> bool:
    """Evaluate one claimed trial and record its outcome; True when the store accepted it."""
    beat = _Heartbeat(store, trial.token, heartbeat_s)
    beat.start()
    try:
        metrics = evaluator.evaluate(trial.arch, trial.budget)
    except Exception:  # any evaluation error fails this trial, not the worker
        beat.stop.set()
        log.exception("trial %d failed", trial.id)
        return store.fail(trial, traceback.format_exc())
    finally:
        beat.stop.set()
    return store.finish(trial, metrics)


def ask_sampled(
    store: TrialStore, ctx: Context, plan: SamplingPlan, worker: str, heartbeat_s: float
) -> Trial | None:
    """A new trial from the sampler (None when the plan's trials are all asked for already):
    Optuna's ``ask``, the architecture suggested decision by decision. One the store already
    scored at the plan's budget is recorded with that trial's metrics, not evaluated again."""
    trial = store.study.ask()
    if "arch_json" in trial.user_attrs:  # ask popped a trial queued meanwhile
        return store.hold(trial._trial_id, worker)
    beat = _Heartbeat(store, trial._trial_id, heartbeat_s)
    store.beat(trial._trial_id)
    beat.start()
    try:
        k = sample_index(store.study, trial.number)
        if k >= plan.trials:  # another worker asked for the last one first
            store.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        trial.set_user_attr(SAMPLE_INDEX, k)
        arch = suggest_arch(trial, ctx.space)
    except BaseException:
        store.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    finally:
        beat.stop.set()
    key = arch_key(arch)
    stage = f"round{plan.round_of(k)}"
    for name, value in store.attrs(arch, key, plan.budget, stage).items():
        trial.set_user_attr(name, value)
    held = store.hold(trial._trial_id, worker)
    done = store.trials(status="done", budget=plan.budget)
    earlier = next((t for t in done if t.arch_key == key and t.id != held.id), None)
    if earlier is not None:  # samplers may propose a scored architecture again
        store.finish(held, {**earlier.metrics, "duplicate_of": earlier.id})
        return None
    return held


def plan_of(store: TrialStore, config: dict[str, Any]) -> SamplingPlan | None:
    trials = store.get_meta(TRIALS_KEY)
    return None if trials is None else SamplingPlan(trials=trials, **config["plan"])


def sampled_count(store: TrialStore) -> int:
    """How many trials the sampler was asked for (``ask`` made), retries excluded."""
    return sum(1 for t in store.study.get_trials(deepcopy=False) if is_fresh(t))


def work_once(store: TrialStore, ctx: Context, worker: str, heartbeat_s: float) -> bool:
    """Evaluate one trial: a queued one, else a new one from the sampler while the plan has
    trials left. False when there was nothing to do."""
    trial = store.claim(worker)
    if trial is None and ctx.sampler is not None:
        plan, k = plan_of(store, ctx.config), sampled_count(store)
        waits = isinstance(ctx.sampler, PredictorRLSampler) and not ctx.sampler.ready(
            store.study, k
        )
        if plan is not None and k < plan.trials and not waits:
            store.study.sampler = ctx.sampler
            trial = ask_sampled(store, ctx, plan, worker, heartbeat_s)
            if trial is None:
                return True  # a duplicate recorded, or the last trial taken: look again
    if trial is None:
        return False
    run_trial(store, ctx.evaluator, trial, heartbeat_s)
    return True


def serve(
    url: str,
    *,
    poll_s: float = 0.5,
    heartbeat_s: float = 5.0,
    stale_after_s: float = 60.0,
    max_trials: int | None = None,
    threads: int = 1,
    parent_pid: int | None = None,
) -> int:
    """Work on the store at ``url`` until the search is finished; returns trials completed.

    ``parent_pid``: the search process that started this worker; the worker ends with it.
    """
    if parent_pid is not None:
        _exit_with_parent(parent_pid, poll_s)
    torch.set_num_threads(threads)
    store = TrialStore(url, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)
    name = worker_name()
    config = store.get_meta(CONFIG_KEY)
    if config is None:  # started before the proposer wrote the config
        log.info(
            "worker %s: waiting for a search to write its config into %s", name, store.display_url
        )
    while config is None:
        time.sleep(poll_s)
        config = store.get_meta(CONFIG_KEY)
    if _finished(store):
        log.info(
            "the search on %s is finished and has no queued trial: nothing to do (%s)",
            store.display_url,
            _summary(store),
        )
        store.close()
        return 0
    ctx = build_context(config)
    done = 0
    log.info("worker %s serving %s", name, store.display_url)
    while max_trials is None or done < max_trials:
        if work_once(store, ctx, name, heartbeat_s):
            done += 1
            continue
        if _finished(store):
            log.info(
                "the search is finished and no trial is queued; worker %s exits after %d "
                "trial(s) (%s)",
                name,
                done,
                _summary(store),
            )
            break
        time.sleep(poll_s)
    store.close()
    return done


def _finished(store: TrialStore) -> bool:
    return store.get_meta(STATE_KEY) == "finished" and not store.counts().get(QUEUED)


def _summary(store: TrialStore) -> str:
    counts = store.counts()
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"


@console_script("rankitect-worker")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rankitect-worker",
        description="Evaluate queued Rankitect trials from the store of a sampling search.",
    )
    parser.add_argument(
        "--store",
        required=True,
        help="the trial store: an SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...) or "
        "journal:///<file>",
    )
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--stale-after-s", type=float, default=60.0)
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    try:
        path = missing_sqlite_file(args.store)
    except sa.exc.ArgumentError as err:
        parser.error(f"--store {args.store!r}: {err}")
    if path is not None:
        parser.exit(
            2,
            f"{parser.prog}: error: no trial store at {path}: a sampling search creates it "
            "(rankitect-search method=sampling writes <run dir>/trials.db, or the file named by "
            "method.store); start the search first, or pass the path of its store\n",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(
        args.store,
        poll_s=args.poll_s,
        heartbeat_s=args.heartbeat_s,
        stale_after_s=args.stale_after_s,
        max_trials=args.max_trials,
        threads=args.threads,
    )
