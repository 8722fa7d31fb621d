"""A trial worker: claim a queued trial from the store, evaluate it, write its metrics; repeat.

Workers share nothing but the store. Each builds the data, the search space and the evaluator
from the config the proposer saved in the store's ``meta`` table, so one command starts a
worker anywhere the store (and the data) can be reached::

    python -m rankitect.search.sampling --store sqlite:///outputs/search/.../trials.db

A worker exits when the proposer has marked the search finished and no trial is queued.
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
from typing import Any

import torch
from hydra.utils import instantiate

from rankitect.search.sampling.evaluators import Evaluator
from rankitect.search.sampling.store import Trial, TrialStore
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
) -> int:
    """Work on the store at ``url`` until the search is finished; returns trials completed."""
    torch.set_num_threads(threads)
    store = TrialStore(url)
    name = worker_name()
    config = None
    while config is None:
        config = store.get_meta(CONFIG_KEY)
        if config is None:
            time.sleep(poll_s)  # started before the proposer wrote the config
    _, evaluator = build_context(config)
    done = 0
    log.info("worker %s serving %s", name, store.display_url)
    while max_trials is None or done < max_trials:
        trial = store.claim(name, stale_after_s)
        if trial is None:
            if store.get_meta(STATE_KEY) == "finished":
                break
            time.sleep(poll_s)
            continue
        done += int(run_trial(store, evaluator, trial, heartbeat_s))
    store.close()
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rankitect.search.sampling",
        description="Evaluate queued Rankitect trials from a store.",
    )
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of the trial store")
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--stale-after-s", type=float, default=60.0)
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(
        args.store,
        poll_s=args.poll_s,
        heartbeat_s=args.heartbeat_s,
        stale_after_s=args.stale_after_s,
        max_trials=args.max_trials,
        threads=args.threads,
    )
