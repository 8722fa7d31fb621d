"""Sampling-based search: the trial store (an Optuna study on SQLite, a real PostgreSQL server
and a journal file), its workers, a killed worker, a restarted search."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from rankitect.search.sampling import SamplingSearch, TrialStore, arch_key, propose_random
from rankitect.search.sampling.evaluators import Evaluator
from rankitect.search.sampling.store import DONE, FAILED, QUEUED, RUNNING
from rankitect.search.sampling.worker import CONFIG_KEY, STATE_KEY, run_trial, serve
from rankitect.space import load_space

DATA = {
    "_target_": "rankitect.data.CTRDataModule",
    "source": {
        "_target_": "rankitect.data.SyntheticCTR",
        "n_train": 200,
        "n_val": 50,
        "n_test": 50,
        "n_dense": 2,
        "cardinalities": [10, 20],
        "interactions": [],
        "gates": [],
    },
}
SPACE = {"_target_": "rankitect.space.build_space", "kind": "generic", "num_choices": 3,
         "blocks": ["linear", "embed_fc", "dot_product"], "distances": [1, 2],
         "dims": {"linear": [8, 16], "embed_fc": [2], "dot_product": [2]},
         "embedding_dim": 4, "bottleneck": 4}  # fmt: skip


class LoggedScore(Evaluator):
    """A known score (a fixed linear function of the encoding), after ``delay_s`` seconds; each
    finished evaluation appends its arch key and budget to ``log_path``, so a test can count
    evaluations across processes."""

    def __init__(self, space, datamodule, log_path: str, delay_s: float = 0.0) -> None:
        self.space, self.log_path, self.delay_s = space, Path(log_path), delay_s
        self.w = torch.randn(space.encoding_size, generator=torch.Generator().manual_seed(7))

    def evaluate(self, arch, budget):
        time.sleep(self.delay_s)
        with self.log_path.open("a") as f:
            f.write(f"{arch_key(arch)} {budget}\n")
        ne = 1.0 + 0.01 * float(self.space.encode(arch) @ self.w) - 1e-6 * budget
        return {"ne": ne, "flops": self.space.flops(arch)}


def evaluations(log_path: Path) -> list[str]:
    return log_path.read_text().splitlines() if log_path.exists() else []


@pytest.fixture()
def space():
    from hydra.utils import instantiate

    dm = instantiate(OmegaConf.create(DATA))
    dm.setup("fit")
    return load_space(SPACE, dm.feature_spec)


ALL_STORES = pytest.mark.parametrize(
    "store_url", ["sqlite", "postgresql", "journal"], indirect=True
)


def some_archs(space, n, seed=0):
    return propose_random(space, n, set(), torch.Generator().manual_seed(seed))


def test_enqueue_is_idempotent_per_arch_and_budget(tmp_path, space):
    store = TrialStore(f"sqlite:///{tmp_path / 't.db'}")
    archs = some_archs(space, 4)
    ids = store.enqueue(archs, 100, "round0")
    assert store.enqueue(archs[::-1], 100, "round1") == ids[::-1]
    assert len(store.enqueue(archs[:2], 200, "halving0")) == 2
    assert store.counts() == {QUEUED: 6}
    assert {t.stage for t in store.trials(budget=100)} == {"round0"}


@ALL_STORES
def test_claims_are_exclusive_and_a_lost_trial_cannot_be_written(store_url, space):
    a = TrialStore(store_url)
    b = TrialStore(store_url, stale_after_s=1.0)  # two handles, as two processes would have
    a.enqueue(some_archs(space, 2), 100, "round0")
    t1, t2 = a.claim("w1"), b.claim("w2")
    assert t1.id != t2.id and a.claim("w3") is None
    assert a.counts() == {RUNNING: 2}
    time.sleep(2.5)  # both heartbeats are older than b's 1 s grace (SQLite stamps whole seconds)
    t3 = b.claim("w3")  # Optuna fails both as stale and queues their retries
    assert t3.id == t1.id and t3.attempts == 2 and t3.token != t1.token
    # w1 lost its trial: its heartbeat and result are refused, w3's is taken
    assert not a.heartbeat(t1) and not a.finish(t1, {"ne": 0.1})
    assert b.finish(t3, {"ne": 0.2})
    assert not b.fail(t3, "too late")
    done = a.trials(status=DONE)
    assert [(t.id, t.worker, t.metrics) for t in done] == [(t1.id, "w3", {"ne": 0.2})]
    assert a.counts() == {DONE: 1, QUEUED: 1}  # t2's retry waits for a worker
    completed = a.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert [(t.value, t.user_attrs["stage"]) for t in completed] == [(0.2, "round0")]


def test_a_failing_evaluation_fails_its_trial_not_the_worker(tmp_path, space):
    class Broken(Evaluator):
        def evaluate(self, arch, budget):
            raise RuntimeError("boom")

    store = TrialStore(f"sqlite:///{tmp_path / 't.db'}")
    store.enqueue(some_archs(space, 1), 100, "round0")
    trial = store.claim("w")
    assert run_trial(store, Broken(), trial, heartbeat_s=1.0)
    (failed,) = store.trials(status=FAILED)
    assert "boom" in failed.error and failed.metrics is None


def stored_config(log_path: Path, delay_s: float) -> dict:
    evaluator = {"_target_": f"{__name__}.LoggedScore", "log_path": str(log_path)}
    return {"data": DATA, "search_space": SPACE, "evaluator": {**evaluator, "delay_s": delay_s}}


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@ALL_STORES
def test_a_killed_worker_trial_is_rerun_and_every_trial_is_done_once(store_url, tmp_path, space):
    url = store_url
    log_path = tmp_path / "evaluations.log"
    store = TrialStore(url)
    # long enough that one worker cannot finish the queue before the other has started
    store.set_meta(CONFIG_KEY, stored_config(log_path, delay_s=2.5))
    store.set_meta(STATE_KEY, "running")
    ids = store.enqueue(some_archs(space, 4), 100, "round0")
    ctx = mp.get_context("spawn")
    kw = {"poll_s": 0.05, "heartbeat_s": 0.2, "stale_after_s": 3.0}
    procs = [ctx.Process(target=serve, args=(url,), kwargs=kw) for _ in range(2)]
    for p in procs:
        p.start()
    victim, survivor = procs
    try:
        tag = f":{victim.pid}:"

        def victim_holds_a_trial():
            return any(tag in (t.worker or "") for t in store.trials(status=RUNNING))

        wait_until(victim_holds_a_trial, 120, "the first worker to claim a trial")
        (held,) = [t for t in store.trials(status=RUNNING) if tag in t.worker]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        wait_until(lambda: store.counts(ids) == {DONE: 4}, 120, "every trial to be done")
        store.set_meta(STATE_KEY, "finished")
        survivor.join(30)
        assert survivor.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    trials = {t.id: t for t in store.trials()}
    assert len(trials) == 4 and all(t.status == DONE for t in trials.values())
    rerun = trials[held.id]
    assert rerun.attempts == 2 and tag not in rerun.worker
    # the killed evaluation never finished: each trial was evaluated to the end exactly once
    logged = evaluations(log_path)
    assert sorted(logged) == sorted(f"{t.arch_key} 100" for t in trials.values())


def make_search(store_url: str, rounds: int) -> SamplingSearch:
    return SamplingSearch(
        store=store_url,
        workers=0,
        rounds=rounds,
        initial_size=6,
        round_size=3,
        proxy_budget=100,
        heartbeat_s=1.0,
        stale_after_s=30.0,
        seed=0,
        evaluator={"_target_": f"{__name__}.LoggedScore", "log_path": "unset"},
        predictor={"ensemble": 2, "epochs": 30},
        sampler={
            "_target_": "rankitect.search.sampling.PredictorRLSampler",
            "steps": 5,
            "batch": 8,
        },  # fmt: skip
        halving={"top_k": 4, "eta": 2, "budgets": [200, 400], "finalists": 1},
    )


@ALL_STORES
def test_a_restarted_search_continues_without_reevaluating(store_url, tmp_path, space):
    from hydra.utils import instantiate

    url = store_url
    log_path = tmp_path / "evaluations.log"
    cfg = OmegaConf.create({"data": DATA, "search_space": SPACE})
    dm = instantiate(cfg.data)
    dm.setup("fit")

    def run(rounds):
        search = make_search(url, rounds)
        search.evaluator_cfg["log_path"] = str(log_path)
        return search.run(space, dm, cfg, tmp_path)

    first = run(2)
    n_first = len(evaluations(log_path))
    assert n_first == 6 + 3 + 4 + 2
    again = run(2)  # the same search again: everything is in the store
    assert len(evaluations(log_path)) == n_first and again.arch == first.arch
    third = run(3)  # one more round: only its proposals and new halving entries are evaluated
    logged = evaluations(log_path)
    assert len(logged) == len(set(logged)) > n_first
    assert len([k for k in logged if k.endswith(" 100")]) == 6 + 3 + 3
    assert third.extra["rounds"][2]["scored"] == 3
    store = TrialStore(url)
    assert store.counts() == {DONE: len(logged)}
    with pytest.raises(ValueError, match="method.store"):
        other = make_search(url, 2)
        other.evaluator_cfg["log_path"] = str(tmp_path / "elsewhere.log")
        other.run(space, dm, cfg, tmp_path)


def test_a_standalone_worker_drains_the_queue_and_exits(tmp_path, space):
    from rankitect.search.sampling.worker import main

    url = f"sqlite:///{tmp_path / 'trials.db'}"
    log_path = tmp_path / "evaluations.log"
    store = TrialStore(url)
    store.set_meta(CONFIG_KEY, stored_config(log_path, delay_s=0.0))
    store.set_meta(STATE_KEY, "finished")  # nothing more will be queued
    store.enqueue(some_archs(space, 3), 100, "round0")
    main(["--store", url, "--poll-s", "0.05"])
    assert store.counts() == {DONE: 3} and len(evaluations(log_path)) == 3


def test_a_worker_refuses_a_store_that_does_not_exist(tmp_path, capsys):
    from rankitect.search.sampling.worker import main

    path = tmp_path / "outputs" / "trials.db"
    with pytest.raises(SystemExit) as exit_:
        main(["--store", f"sqlite:///{path}"])
    assert exit_.value.code == 2
    assert f"no trial store at {path}" in capsys.readouterr().err
    assert not path.exists()  # no empty store left behind


def test_a_worker_on_a_finished_store_says_why_it_exits(tmp_path, caplog):
    from rankitect.search.sampling.worker import main

    url = f"sqlite:///{tmp_path / 'trials.db'}"
    store = TrialStore(url)
    # A config that cannot be built: the worker must not get as far as building it.
    store.set_meta(CONFIG_KEY, {"data": {"_target_": "no.such.Data"}})
    store.set_meta(STATE_KEY, "finished")
    caplog.set_level("INFO", logger="rankitect.search.sampling.worker")
    start = time.monotonic()
    main(["--store", url, "--poll-s", "0.05"])
    assert time.monotonic() - start < 5
    assert "is finished and has no queued trial: nothing to do (no trials)" in caplog.text


PARENT = """
import multiprocessing as mp, os, pathlib, sys, time

def child(url, parent_pid, ready):
    from rankitect.search.sampling.worker import serve
    pathlib.Path(ready).touch()
    serve(url, poll_s=0.1, parent_pid=parent_pid)  # no config in the store: waits forever

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(
        target=child, args=(sys.argv[1], os.getpid(), sys.argv[2]), daemon=True
    )
    p.start()
    print(p.pid, flush=True)
    time.sleep(600)
"""


def _ended(pid: int) -> bool:
    try:  # gone, or a zombie nobody reaps (PID 1 in a container may not)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_spawned_worker_ends_when_its_search_process_is_killed(tmp_path):
    import subprocess
    import sys

    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(PARENT)
    TrialStore(f"sqlite:///{tmp_path / 'trials.db'}")
    parent = subprocess.Popen(
        [sys.executable, str(script), f"sqlite:///{tmp_path / 'trials.db'}", str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        child = int(parent.stdout.readline())
        wait_until(ready.exists, 60, "the worker to start")
        os.kill(parent.pid, signal.SIGKILL)  # no atexit handler, no daemon clean-up
        parent.wait()
        wait_until(lambda: _ended(child), 30, "the orphaned worker to exit")
    finally:
        parent.kill()
        if child is not None and not _ended(child):
            os.kill(child, signal.SIGKILL)  # a failed test leaves no orphan behind


def test_the_search_logs_per_trial_progress_and_the_halving_rungs(tmp_path, space, caplog):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"data": DATA, "search_space": SPACE})
    dm = instantiate(cfg.data)
    dm.setup("fit")
    search = make_search(f"sqlite:///{tmp_path / 'trials.db'}", rounds=1)
    search.evaluator_cfg["log_path"] = str(tmp_path / "evaluations.log")
    caplog.set_level("INFO", logger="rankitect.search.sampling.method")
    search.run(space, dm, cfg, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("sampling.method")]
    round0 = [line for line in lines if line.startswith("round 0: ") and "done" in line]
    # one line per evaluated trial (workers: 0 evaluates them one at a time), then the best
    assert [line.split(",")[0] for line in round0] == [f"round 0: {i}/6 done" for i in range(7)]
    assert round0[0] == "round 0: 0/6 done, 0 running, 6 queued, 0 failed"
    assert "best NE so far" in round0[-1]
    assert "halving rung 0 (200 examples each): 4/4 done" in "\n".join(lines)
    assert "halving rung 1 (400 examples each): 2/2 done" in "\n".join(lines)


def test_optuna_dashboard_shows_the_trials_with_ne_flops_and_architecture(tmp_path, space):
    import json
    import wsgiref.util

    from optuna_dashboard import wsgi

    store = TrialStore(f"sqlite:///{tmp_path / 'trials.db'}")
    archs = some_archs(space, 2)
    store.enqueue(archs, 100, "round0")
    for ne in (0.5, 0.25):
        trial = store.claim("w")
        store.finish(trial, {"ne": ne, "flops": space.flops(trial.arch)})
    app = wsgi(store.storage)

    def get(path: str):
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        wsgiref.util.setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    (study,) = get("/api/studies")["study_summaries"]
    assert study["study_name"] == "rankitect"
    shown = get(f"/api/studies/{study['study_id']}")["trials"]
    assert [t["values"] for t in shown] == [[0.5], [0.25]]
    for t, arch in zip(shown, archs, strict=True):
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert float(attrs["ne"]) == t["values"][0]
        assert int(attrs["flops"]) == space.flops(arch)
        assert json.loads(attrs["arch_json"]) == json.loads(arch.to_json(indent=None))


@pytest.mark.parametrize("sampler", ["optuna.samplers.TPESampler", "optuna.samplers.RandomSampler"])
def test_optuna_samplers_run_the_same_search(tmp_path, space, sampler):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"data": DATA, "search_space": SPACE})
    dm = instantiate(cfg.data)
    dm.setup("fit")
    log_path = tmp_path / "evaluations.log"
    search = make_search(f"sqlite:///{tmp_path / 'trials.db'}", rounds=2)
    search.sampler_cfg = {"_target_": sampler, "seed": 0}
    search.evaluator_cfg["log_path"] = str(log_path)
    outcome = search.run(space, dm, cfg, tmp_path)
    assert outcome.extra["sampler"] == sampler
    assert [r["scored"] for r in outcome.extra["rounds"]] == [6, 3]
    store = TrialStore(f"sqlite:///{tmp_path / 'trials.db'}")
    sampled = store.trials(budget=100)
    assert len(sampled) == 9 and all(t.status == DONE for t in sampled)
    # every sampled architecture is one the space decodes, and each was evaluated once
    for t in sampled:
        space.validate(t.arch)
    logged = [line for line in evaluations(log_path) if line.endswith(" 100")]
    assert len(logged) == len(set(logged)) == len({t.arch_key for t in sampled})
    assert outcome.arch in [t.arch for t in sampled]


def test_a_store_of_the_earlier_schema_is_refused_with_what_to_do(tmp_path):
    import sqlalchemy as sa

    path = tmp_path / "trials.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the tables Rankitect wrote before its store was Optuna's
        conn.exec_driver_sql("CREATE TABLE trials (id INTEGER PRIMARY KEY, arch_json TEXT)")
        conn.exec_driver_sql("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    engine.dispose()
    with pytest.raises(ValueError, match="earlier Rankitect.*new method.store"):
        TrialStore(f"sqlite:///{path}")


@pytest.mark.parametrize("name", ["predictor_rl", "tpe", "random", "gp"])
def test_each_shipped_sampler_config_composes_and_builds(name, space):
    from hydra import compose, initialize_config_dir

    from rankitect.cli.config import conf_dir
    from rankitect.search.sampling.worker import build_sampler

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=["method=sampling", f"method/sampler={name}"])
    method = OmegaConf.to_container(cfg.method, resolve=True)
    config = {"sampler": method["sampler"], "predictor": method["predictor"], "seed": 0,
              "plan": {"initial_size": 4, "round_size": 2, "budget": 100}}  # fmt: skip
    sampler = build_sampler(config, space)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert type(sampler).__name__ == method["sampler"]["_target_"].rsplit(".", 1)[1]


class InterruptedOnce(LoggedScore):
    """`LoggedScore`, except that the first evaluation after ``flag`` is created raises
    KeyboardInterrupt (as a kill would end the process), deleting the flag."""

    def __init__(self, space, datamodule, log_path: str, flag: str) -> None:
        super().__init__(space, datamodule, log_path)
        self.flag = Path(flag)

    def evaluate(self, arch, budget):
        if self.flag.exists():
            self.flag.unlink()
            raise KeyboardInterrupt
        return super().evaluate(arch, budget)


def test_a_search_restarted_after_a_kill_reruns_the_trial_it_left_running(tmp_path, space):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"data": DATA, "search_space": SPACE})
    dm = instantiate(cfg.data)
    dm.setup("fit")
    url, flag = f"sqlite:///{tmp_path / 'trials.db'}", tmp_path / "interrupt"

    def search():
        s = make_search(url, rounds=2)
        s.heartbeat_s, s.stale_after_s = 0.2, 1.0
        log_path = str(tmp_path / "evaluations.log")
        s.evaluator_cfg = {"_target_": f"{__name__}.InterruptedOnce", "log_path": log_path,
                           "flag": str(flag)}  # fmt: skip
        return s

    flag.touch()
    with pytest.raises(KeyboardInterrupt):  # the first trial is left RUNNING
        search().run(space, dm, cfg, tmp_path)
    (left,) = TrialStore(url).trials(status=RUNNING)
    time.sleep(2.5)  # its heartbeat goes stale; the single inline worker must not deadlock
    outcome = search().run(space, dm, cfg, tmp_path)
    rerun = {t.id: t for t in TrialStore(url).trials()}[left.id]
    assert rerun.status == DONE and rerun.attempts == 2
    assert [r["scored"] for r in outcome.extra["rounds"]] == [6, 3]
