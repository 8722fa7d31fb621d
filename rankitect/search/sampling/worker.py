"""A trial worker: claim a queued trial from the store, evaluate it, write its metrics; repeat.

Workers share nothing but the store. Each builds the data, the search space and the evaluator
from the config the proposer saved in the store's ``meta`` table, so one command starts a
worker anywhere the store (and the data) can be reached::

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
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import torch
from hydra.utils import instantiate

from rankitect.cli.entry import console_script
from rankitect.search.sampling.evaluators import Evaluator
from rankitect.search.sampling.store import QUEUED, Trial, TrialStore
from rankitect.space import load_space
from rankitect.space.space import SearchSpace

log = logging.getLogger(__name__)

CONFIG_KEY = "config"
STATE_KEY = "state"  # "running" while the proposer works, "finished" afterwards


def build_context(config: dict[str, Any]) -> tuple[SearchSpace, Evaluator]:
    """The search space and evaluator described by a stored search config."""
    datamodule = instantiate(config["data"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    space = load_space(config["search_space"], datamodule.feature_spec)
    evaluator = instantiate(config["evaluator"], space=space, datamodule=datamodule)
    return space, evaluator


class _Heartbeat(threading.Thread):
    """Refreshes a running trial's heartbeat every ``every_s`` seconds until stopped."""

    def __init__(self, store: TrialStore, trial: Trial, every_s: float) -> None:
        super().__init__(daemon=True)
        self.store, self.trial, self.every_s = store, trial, every_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            if not self.store.heartbeat(self.trial):
                log.warning("lost trial %d (re-queued after a stale heartbeat)", self.trial.id)
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
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_trial(store: TrialStore, evaluator: Evaluator, trial: Trial, heartbeat_s: float) -> bool:
    """Evaluate one claimed trial and record its outcome; True when the store accepted it."""
    beat = _Heartbeat(store, trial, heartbeat_s)
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
    store = TrialStore(url)
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
    _, evaluator = build_context(config)
    done = 0
    log.info("worker %s serving %s", name, store.display_url)
    while max_trials is None or done < max_trials:
        trial = store.claim(name, stale_after_s)
        if trial is None:
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
            continue
        done += int(run_trial(store, evaluator, trial, heartbeat_s))
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
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of the trial store")
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
