"""Sampling-based search (paper §3.2.1, §4.2.3): rounds of proposals scored by a low-cost proxy
in a shared trial store, then successive halving of the best ones.

The store is an Optuna study (`rankitect.search.sampling.store`) and the proposer an Optuna
sampler (``method.sampler``, `rankitect.search.sampling.samplers`): by default the paper's, a
round of ``initial_size`` random architectures, then rounds of ``round_size`` from an RL
sampler on a neural predictor refitted on every scored one; Optuna's TPE, random or GP sampler
in its place with ``method/sampler=tpe`` (``random``, ``gp``). The ``halving.top_k`` best by
proxy NE then go through successive halving at growing budgets, queued in the same study.

Every trial is evaluated by worker processes (``workers`` local ones, or any started with
``rankitect-worker --store <url>``), which ask the sampler themselves. A restarted search
re-reads the store: a trial already asked for is not asked again, and a finished (arch, budget)
is never evaluated twice.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rankitect.search.method import to_plain
from rankitect.search.outcome import SearchOutcome
from rankitect.search.sampling.halving import successive_halving
from rankitect.search.sampling.samplers import PredictorRLSampler, SamplingPlan
from rankitect.search.sampling.store import (
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Trial,
    TrialStore,
)
from rankitect.search.sampling.worker import (
    CONFIG_KEY,
    STATE_KEY,
    TRIALS_KEY,
    Context,
    build_sampler,
    serve,
    work_once,
    worker_name,
)
from rankitect.space.arch import Arch
from rankitect.space.space import SearchSpace

log = logging.getLogger(__name__)

HALVING_KEYS = {"top_k", "eta", "budgets", "finalists"}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(ne, flops)`` no other point beats in both (lower is better),
    sorted by FLOPs."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    front, best_ne = [], math.inf
    for i in order:
        if points[i][0] < best_ne:
            front.append(i)
            best_ne = points[i][0]
    return front


class SamplingSearch:
    """``conf/method/sampling.yaml``; see the module docstring and docs/sampling.md."""

    name = "sampling"

    def __init__(
        self,
        *,
        evaluator: Any,
        predictor: Any,
        sampler: Any,
        halving: Any,
        store: str | None = None,
        workers: int = 2,
        rounds: int = 3,
        initial_size: int = 16,
        round_size: int = 8,
        proxy_budget: int = 20000,
        poll_s: float = 0.5,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 60.0,
        seed: int = 0,
    ) -> None:
        if workers < 0:
            raise ValueError(f"method.workers must be >= 0, got {workers}")
        if rounds < 1 or initial_size < 2 or round_size < 1:
            raise ValueError(
                "method.rounds >= 1, method.initial_size >= 2 and method.round_size >= 1 needed"
            )
        if proxy_budget < 1:
            raise ValueError(f"method.proxy_budget must be >= 1, got {proxy_budget}")
        if heartbeat_s >= stale_after_s:
            raise ValueError("method.heartbeat_s must be well below method.stale_after_s")
        self.evaluator_cfg = dict(to_plain(evaluator))
        self.predictor_cfg = dict(to_plain(predictor))
        self.sampler_cfg = dict(to_plain(sampler))
        if "_target_" not in self.sampler_cfg:
            raise ValueError(
                "method.sampler needs a _target_ (an Optuna sampler): pick one with "
                "method/sampler=predictor_rl|tpe|random|gp (conf/method/sampler/)"
            )
        self.halving_cfg = dict(to_plain(halving))
        unknown = set(self.halving_cfg) - HALVING_KEYS
        if unknown or "budgets" not in self.halving_cfg:
            raise ValueError(
                f"method.halving takes {sorted(HALVING_KEYS)} (budgets required); "
                f"unknown: {sorted(unknown)}"
            )
        self.store_url = store
        self.workers = int(workers)
        self.plan = SamplingPlan(
            trials=int(initial_size) + (int(rounds) - 1) * int(round_size),
            initial_size=int(initial_size),
            round_size=int(round_size),
            budget=int(proxy_budget),
        )
        self.rounds = int(rounds)
        self.proxy_budget = int(proxy_budget)
        self.poll_s = float(poll_s)
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self.seed = int(seed)
        self._procs: list[mp.Process] = []
        self._inline: Context | None = None
        self._inline_name = worker_name()

    # ---- workers -------------------------------------------------------------------------------

    def _start_worker(self, ctx: Any, url: str) -> mp.Process:
        p = ctx.Process(
            target=serve,
            args=(url,),
            kwargs={
                "poll_s": self.poll_s,
                "heartbeat_s": self.heartbeat_s,
                "stale_after_s": self.stale_after_s,
                # daemon covers a normal exit; this, the search's process being killed
                "parent_pid": os.getpid(),
            },
            daemon=True,
        )
        p.start()
        return p

    def _keep_workers_alive(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        for i, p in enumerate(self._procs):
            if not p.is_alive():
                log.warning("worker pid %s exited with %s; starting another", p.pid, p.exitcode)
                self._procs[i] = self._start_worker(ctx, url)

    def _wait(self, store: TrialStore, trials_of, expected: int, what: str) -> list[Trial]:
        """Block until ``expected`` trials of ``trials_of(store)`` are done or failed, logging
        ``what`` with their progress whenever it changes; returns them."""
        last = None
        while True:
            store.requeue_stale()
            trials = trials_of(store)
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            if counts != last:
                last = counts
                self._log_progress(trials, counts, expected, what)
            if sum(counts.get(s, 0) for s in FINISHED) >= expected:
                return trials
            if self.workers == 0:
                if not work_once(store, self._inline, self._inline_name, self.heartbeat_s):
                    time.sleep(self.poll_s)  # the rest runs in workers started elsewhere
            else:
                self._keep_workers_alive(store.url)
                time.sleep(self.poll_s)

    def wait(self, store: TrialStore, ids: list[int], what: str) -> list[Trial]:
        """Block until every trial in ``ids`` is finished; returns them in ``ids`` order."""
        done = self._wait(store, lambda s: s.trials(ids=ids), len(set(ids)), what)
        by_id = {t.id: t for t in done}
        return [by_id[i] for i in ids]

    @staticmethod
    def _log_progress(trials: list[Trial], counts: dict[str, int], expected: int, what: str):
        done = [t for t in trials if t.status == DONE]
        # SiGeo's trials carry -score as their "ne": say so rather than call it an NE
        name = "-SiGeo score" if any("sigeo" in t.metrics for t in done) else "NE"
        best = f"; best {name} so far {min(t.metrics['ne'] for t in done):.4f}" if done else ""
        log.info(
            "%s: %d/%d done, %d running, %d queued, %d failed%s",
            what,
            counts.get(DONE, 0),
            expected,
            counts.get(RUNNING, 0),
            max(counts.get(QUEUED, 0), expected - len(trials)),
            counts.get(FAILED, 0),
            best,
        )

    # ---- the search ----------------------------------------------------------------------------

    def _config(self, cfg: DictConfig) -> dict[str, Any]:
        """What a worker builds everything from (bound to the store: another search's store is
        refused)."""
        return {
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "search_space": OmegaConf.to_container(cfg.search_space, resolve=True),
            "evaluator": self.evaluator_cfg,
            "sampler": self.sampler_cfg,
            "predictor": self.predictor_cfg,
            "plan": {k: v for k, v in vars(self.plan).items() if k != "trials"},
            "seed": self.seed,
        }

    def _open_store(self, config: dict[str, Any], output_dir: Path) -> TrialStore:
        url = self.store_url or f"sqlite:///{(output_dir / 'trials.db').resolve()}"
        store = TrialStore(url, heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s)
        store.bind_config(
            CONFIG_KEY,
            config,
            "data, search_space, method.evaluator, sampler, initial_size, round_size or "
            "proxy_budget",
        )
        # Not bound: a restart may run more rounds.
        store.set_meta(TRIALS_KEY, self.plan.trials)
        store.set_meta(STATE_KEY, "running")
        return store

    def _scored(self, store: TrialStore) -> list[Trial]:
        return [
            t
            for t in store.trials(status=DONE, budget=self.proxy_budget, stage_prefix="round")
            if math.isfinite(t.metrics["ne"])
        ]

    def _round(self, store: TrialStore, r: int) -> list[Trial]:
        """Wait for round ``r``'s trials (asked for by the workers, or here)."""
        stage = f"round{r}"
        return self._wait(
            store,
            lambda s: [t for t in s.trials(stage_prefix=stage) if t.stage == stage],
            self.plan.round_size_of(r),
            f"round {r}",
        )

    def _halving(self, store: TrialStore, candidates: list[Arch]) -> list:
        def evaluate(archs: list[Arch], budget: int, rung: int) -> list[float]:
            ids = store.enqueue(archs, budget, f"halving{rung}")
            done = self.wait(store, ids, f"halving rung {rung} ({budget} examples each)")
            return [t.metrics["ne"] if t.status == DONE else math.nan for t in done]

        cfg = self.halving_cfg
        return successive_halving(
            candidates,
            [int(b) for b in cfg["budgets"]],
            evaluate,
            eta=float(cfg.get("eta", 2.0)),
            finalists=int(cfg.get("finalists", 1)),
        )

    def _policy(self, store: TrialStore, sampler: Any) -> Any:
        """The last round's RL policy of the paper's sampler (refitted here when the workers
        ran it); None for another sampler."""
        if not isinstance(sampler, PredictorRLSampler) or self.plan.rounds < 2:
            return None
        if sampler.policy is None:
            sampler.round_proposals(store.study, self.plan.rounds - 1)
        return sampler.policy

    def run(
        self, space: SearchSpace, datamodule: Any, cfg: DictConfig, output_dir: str | Path
    ) -> SearchOutcome:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.evaluator_cfg.get("supernet_path", "") is None:
            self.evaluator_cfg["supernet_path"] = str((output_dir / "supernet.pt").resolve())
        config = json.loads(json.dumps(self._config(cfg)))  # as the store gives it back
        # Fail on a bad method.sampler / method.predictor key now, not in the workers.
        sampler = build_sampler(config, space)
        store = self._open_store(config, output_dir)
        evaluator = instantiate(self.evaluator_cfg, space=space, datamodule=datamodule)
        evaluator.prepare()
        self._inline = Context(space, evaluator, config, sampler) if self.workers == 0 else None
        ctx = mp.get_context("spawn")
        self._procs = [self._start_worker(ctx, store.url) for _ in range(self.workers)]
        try:
            for r in range(self.plan.rounds):
                self._round(store, r)
            scored = self._scored(store)
            if not scored:
                raise RuntimeError("no architecture was scored; see the failed trials' errors")
            ranked = sorted(scored, key=lambda t: t.metrics["ne"])
            top_k = int(self.halving_cfg.get("top_k", 8))
            rungs = self._halving(store, [t.arch for t in ranked[:top_k]])
        finally:
            store.set_meta(STATE_KEY, "finished")
            for p in self._procs:
                p.join(timeout=max(30.0, 4 * self.poll_s))
                if p.is_alive():
                    p.terminate()
        final = rungs[-1]
        if not final.scores or not math.isfinite(final.scores[0]):
            raise RuntimeError("every finalist failed; see the failed trials' errors")
        return self._outcome(space, store, scored, rungs, self._policy(store, sampler))

    def _outcome(self, space, store, scored, rungs, policy) -> SearchOutcome:
        curve, best = [], math.inf
        for i, t in enumerate(scored):
            best = min(best, t.metrics["ne"])
            curve.append((i + 1, best))
        points = [(t.metrics["ne"], float(t.metrics["flops"])) for t in scored]
        pareto = [
            {"arch": scored[i].arch.to_dict(), "ne": points[i][0], "flops": int(points[i][1])}
            for i in pareto_front(points)
        ]
        rounds = []
        for r in range(self.rounds):
            ne = [t.metrics["ne"] for t in scored if t.stage == f"round{r}"]
            rounds.append({"round": r, "scored": len(ne), "best_ne": min(ne, default=None)})
        final = rungs[-1]
        finalists = [
            {"arch": a.to_dict(), "ne": s, "flops": int(space.flops(a))}
            for a, s in zip(final.candidates, final.scores, strict=True)
        ][: int(self.halving_cfg.get("finalists", 1))]
        probs = policy.probs() if policy is not None else space.priors()
        by_proxy = sorted(scored, key=lambda t: t.metrics["ne"])
        return SearchOutcome(
            arch=final.candidates[0],
            probs=probs,
            candidates=[*final.candidates, *(t.arch for t in by_proxy)],
            curves={"best_proxy_ne": curve},
            extra={
                "ne": final.scores[0],
                "pareto": pareto,
                "finalists": finalists,
                "rounds": rounds,
                "halving": [
                    {"budget": g.budget, "evaluated": len(g.candidates), "best_ne": g.scores[0]}
                    for g in rungs
                ],
                "trials": store.counts(),
                "store": store.display_url,
                "sampler": self.sampler_cfg["_target_"],
            },
        )
