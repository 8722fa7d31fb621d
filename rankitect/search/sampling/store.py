"""The trial store: an Optuna study holding every proposed (architecture, budget), its status
and metrics, and the search's config (as study user attributes, so that a worker started on
its own knows what to build).

The storage URL picks Optuna's storage:

- an SQLAlchemy URL (``sqlite:///path.db`` by default, ``postgresql+psycopg://user@host/db``
  on a cluster): `optuna.storages.RDBStorage` with heartbeats. A running trial whose heartbeat
  is older than ``stale_after_s`` is failed by `optuna.storages.fail_stale_trials`, and
  `RetryHeartbeatStaleTrialCallback` queues a copy of it: a killed worker's trial is run again;
- ``journal:///path/to/trials.log``: `optuna.storages.JournalStorage` on a file (safe on NFS,
  where SQLite is not). Optuna keeps no heartbeat there, so this module stamps one in a system
  attribute and applies the same rule with the same callback.

One trial of ours is a chain of Optuna trials, the first attempt and its retries: its ``id`` is
the first attempt's number, its status and metrics the last attempt's. An attempt is held by
the worker that claimed it only while it is RUNNING: Optuna refuses to finish a trial already
failed as stale, so a worker that lost its trial cannot write it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import (
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from rankitect.space.arch import Arch

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED)
STATUS = {
    TrialState.WAITING: QUEUED,
    TrialState.RUNNING: RUNNING,
    TrialState.COMPLETE: DONE,
    TrialState.FAIL: FAILED,
    TrialState.PRUNED: FAILED,
}
STUDY_NAME = "rankitect"
JOURNAL_SCHEME = "journal://"
HEARTBEAT_ATTR = "rankitect:heartbeat"  # journal storage only

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and their retry callback are what this store is built on (Optuna marks them
# experimental), used with ask/tell across processes rather than inside `Study.optimize`.
for _message in (
    r"Argument ``heartbeat_interval`` is an experimental feature",
    r"RetryHeartbeatStaleTrialCallback is experimental",
    r"optuna\.storages\._heartbeat\.fail_stale_trials is experimental",
    r"Heartbeat of storage is supposed to be used with Study\.optimize",
):
    warnings.filterwarnings("ignore", message=_message)


def arch_key(arch: Arch) -> str:
    """A stable identity of an architecture: SHA-1 of its compact JSON."""
    return hashlib.sha1(arch.to_json(indent=None).encode()).hexdigest()


@dataclass(frozen=True)
class Trial:
    id: int  # the first attempt's trial number
    arch: Arch
    arch_key: str
    budget: int
    stage: str
    status: str
    worker: str | None
    token: int  # the Optuna trial id of this attempt
    attempts: int
    metrics: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_frozen(cls, t: FrozenTrial, arch_type: Any = Arch) -> Trial:
        attrs = t.user_attrs
        return cls(
            id=first_number(t),
            arch=arch_type.from_json(attrs["arch_json"]),
            arch_key=attrs["arch_key"],
            budget=int(attrs["budget"]),
            stage=attrs["stage"],
            status=STATUS[t.state],
            worker=attrs.get("worker"),
            token=t._trial_id,
            attempts=len(t.system_attrs.get("retry_history", [])) + 1,
            metrics=attrs.get("metrics"),
            error=attrs.get("error"),
        )


def first_number(t: FrozenTrial) -> int:
    """The number of the first attempt of the trial ``t`` is an attempt of."""
    return int(t.system_attrs.get("failed_trial", t.number))


def journal_path(url: str) -> str | None:
    """The file of a ``journal:///path`` URL; None for another URL."""
    return url[len(JOURNAL_SCHEME) :] if url.startswith(JOURNAL_SCHEME) else None


def _sqlite_immediate(engine: sa.Engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe).

    pysqlite otherwise starts transactions lazily as readers and upgrades them on the first
    write, which fails at once (no busy wait) when another process wrote in between.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def refuse_old_store(url: str) -> None:
    """A clear error for a store written by Rankitect's own trial table (before Optuna), whose
    ``trials`` table Optuna would misread."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if "meta" in tables and "studies" not in tables:
        raise ValueError(
            f"the trial store {sa.make_url(url).render_as_string(hide_password=True)} was "
            "written by an earlier Rankitect (its own trials/meta tables, before the store moved "
            "to Optuna) and cannot be read: re-run the search with a new method.store (or "
            "delete that file); its finished trials are not carried over"
        )


def open_storage(url: str, heartbeat_s: float, stale_after_s: float, busy_timeout_s: float):
    """Optuna's storage for ``url`` (see the module docstring)."""
    path = journal_path(url)
    if path is not None:
        if not path:
            raise ValueError(f"a journal store URL is journal:///<path of the file>, got {url!r}")
        return JournalStorage(JournalFileBackend(path))
    refuse_old_store(url)
    is_sqlite = sa.make_url(url).get_backend_name() == "sqlite"
    engine_kwargs: dict[str, Any] = {}
    if is_sqlite:
        # One connection per use (threads share the storage: the heartbeat's), and a busy wait.
        engine_kwargs = {"poolclass": sa.pool.NullPool, "connect_args": {"timeout": busy_timeout_s}}
    storage = RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=max(1, math.ceil(heartbeat_s)),
        grace_period=max(1, math.ceil(stale_after_s)),
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
    )
    if is_sqlite:
        _sqlite_immediate(storage.engine)
    return storage


class TrialStore:
    """The trials of one search in an Optuna study behind ``url``; safe to open from many
    processes and machines.

    ``heartbeat_s``: how often a worker stamps its running trial; ``stale_after_s``: how old a
    stamp may get before the trial is failed and retried (Optuna's heartbeat interval and
    grace period, whole seconds on an RDB storage). ``arch_type`` parses the stored
    ``arch_json`` back (its ``from_json``): `Arch` here, the AutoML search's `JointConfig`
    (architecture + hyper-parameters) there. ``study.sampler`` is what ``study.ask()``
    proposes new trials with: the sampling search's workers set it."""

    def __init__(
        self,
        url: str,
        *,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 60.0,
        busy_timeout_s: float = 60.0,
        arch_type: Any = Arch,
    ) -> None:
        self.url = url
        self.arch_type = arch_type
        self.stale_after_s = float(stale_after_s)
        self.storage = open_storage(url, heartbeat_s, stale_after_s, busy_timeout_s)
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=STUDY_NAME,
            direction="minimize",
            load_if_exists=True,
        )

    @property
    def display_url(self) -> str:
        """The URL with its password hidden (safe to log and to write into results.json)."""
        if journal_path(self.url) is not None:
            return self.url
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        if isinstance(self.storage, RDBStorage):
            self.storage.remove_session()
            self.storage.engine.dispose()

    # ---- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        return self.storage.get_study_user_attrs(self.study._study_id).get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, json.loads(json.dumps(value)))

    def bind_config(self, key: str, config: dict[str, Any], what: str) -> None:
        """Record the search ``config`` under ``key``; a store that already holds a different
        one belongs to another search (``what`` names its keys in the error)."""
        config = json.loads(json.dumps(config))
        previous = self.get_meta(key)
        if previous is not None and previous != config:
            raise ValueError(
                f"the trial store {self.display_url} holds a search with another {what} config; "
                "use a new method.store to start afresh"
            )
        self.set_meta(key, config)

    # ---- attempts -> trials --------------------------------------------------------------------

    def _attempts(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        """Every attempt that carries an architecture (a trial just asked gets one at once)."""
        return [
            t
            for t in self.storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=states
            )
            if "arch_json" in t.user_attrs
        ]

    def _latest(self) -> dict[int, FrozenTrial]:
        """The last attempt of each trial, by trial id, in id order."""
        latest: dict[int, FrozenTrial] = {}
        for t in self._attempts():
            first = first_number(t)
            if first not in latest or t.number > latest[first].number:
                latest[first] = t
        return dict(sorted(latest.items()))

    # ---- proposer side -------------------------------------------------------------------------

    def enqueue(self, archs: Sequence[Arch], budget: int, stage: str) -> list[int]:
        """Queue ``archs`` at ``budget``; an (arch, budget) already in the store, whatever its
        status, is not queued again. Returns the trial ids in order."""
        if budget < 1:
            raise ValueError(f"a trial budget must be >= 1 example, got {budget}")
        keys = [arch_key(a) for a in archs]

        def stored() -> dict[str, int]:
            return {
                t.user_attrs["arch_key"]: i
                for i, t in self._latest().items()
                if int(t.user_attrs["budget"]) == budget
            }

        existing = stored()
        for arch, key in zip(archs, keys, strict=True):
            if key in existing:
                continue
            self.study.enqueue_trial(
                {}, user_attrs=self.attrs(arch, key, budget, stage), skip_if_exists=False
            )
            existing[key] = -1
        if -1 in existing.values():
            existing = stored()
        return [existing[k] for k in keys]

    @staticmethod
    def attrs(arch: Arch, key: str, budget: int, stage: str) -> dict[str, Any]:
        """The user attributes that make an Optuna trial one of ours, ``arch_json`` last: set
        one by one (on a trial Optuna's ``ask`` made), the last marks the trial complete."""
        return {
            "arch_key": key,
            "budget": int(budget),
            "stage": stage,
            "arch_json": arch.to_json(indent=None),
        }

    def requeue_stale(self) -> None:
        """Fail running trials whose heartbeat is older than ``stale_after_s`` and queue their
        retries (Optuna's `fail_stale_trials`; by hand on a journal, which has no heartbeat)."""
        if isinstance(self.storage, RDBStorage):
            fail_stale_trials(self.study)
            return
        now, retry = time.time(), RetryHeartbeatStaleTrialCallback()
        for t in self.storage.get_all_trials(
            self.study._study_id, deepcopy=False, states=(TrialState.RUNNING,)
        ):
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None or now - beat <= self.stale_after_s:
                continue
            try:
                if self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    retry(self.study, self.storage.get_trial(t._trial_id))
            except UpdateFinishedTrialError:
                pass  # another process finished or failed it first

    # ---- worker side ---------------------------------------------------------------------------

    def claim(self, worker: str) -> Trial | None:
        """Take the oldest queued trial (failing stale ones first, so that their retries are
        queued), or None. Optuna's own pop: WAITING -> RUNNING succeeds in one process only."""
        self.requeue_stale()
        for t in self._attempts(states=(TrialState.WAITING,)):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it
            except UpdateFinishedTrialError:
                continue
            return self.hold(t._trial_id, worker)
        return None

    def hold(self, trial_id: int, worker: str) -> Trial:
        """Stamp a first heartbeat, then ``worker``, on the running attempt ``trial_id``: the
        heartbeat first, since a RUNNING trial without one never goes stale (a worker killed
        in between would leave it held for ever)."""
        self.beat(trial_id)
        self.storage.set_trial_user_attr(trial_id, "worker", worker)
        return Trial.from_frozen(self.storage.get_trial(trial_id), self.arch_type)

    def beat(self, trial_id: int) -> None:
        if isinstance(self.storage, RDBStorage):
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def heartbeat(self, trial: Trial) -> bool:
        """Refresh ``trial``'s heartbeat; False when the worker no longer holds it."""
        return self.heartbeat_token(trial.token)

    def heartbeat_token(self, trial_id: int) -> bool:
        """Refresh the heartbeat of the attempt ``trial_id`` while it is running."""
        if self.storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        try:
            self.beat(trial_id)
        except UpdateFinishedTrialError:
            return False
        return True

    def _end(self, trial: Trial, state: TrialState, value: float | None, **attrs: Any) -> bool:
        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(trial.token, k, v)
            number = self.storage.get_trial_number_from_id(trial.token)
            self.study.tell(number, value, state=state)
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            return False  # failed as stale (and retried elsewhere) meanwhile
        return True

    def finish(self, trial: Trial, metrics: dict[str, Any]) -> bool:
        """Record ``trial``'s metrics and its NE as the trial's value (a non-finite NE fails
        it, as Optuna does); False when the worker no longer holds it."""
        metrics = json.loads(json.dumps(metrics))
        ne = float(metrics["ne"])
        if not math.isfinite(ne):
            return self._end(trial, TrialState.FAIL, None, metrics=metrics, error="non-finite NE")
        # NE and FLOPs on their own too: columns of optuna-dashboard's trial table
        scalars = {k: metrics[k] for k in ("flops",) if k in metrics}
        return self._end(trial, TrialState.COMPLETE, ne, metrics=metrics, ne=ne, **scalars)

    def fail(self, trial: Trial, error: str) -> bool:
        """Mark ``trial`` failed with its error; False when the worker no longer holds it."""
        return self._end(trial, TrialState.FAIL, None, error=error[-4000:])

    # ---- queries -------------------------------------------------------------------------------

    def trials(
        self,
        *,
        ids: Iterable[int] | None = None,
        status: str | None = None,
        stage_prefix: str | None = None,
        budget: int | None = None,
    ) -> list[Trial]:
        """Trials matching every given filter, in id order."""
        wanted = None if ids is None else set(ids)
        out = []
        for i, t in self._latest().items():
            if wanted is not None and i not in wanted:
                continue
            trial = Trial.from_frozen(t, self.arch_type)
            if status is not None and trial.status != status:
                continue
            if stage_prefix is not None and not trial.stage.startswith(stage_prefix):
                continue
            if budget is not None and trial.budget != budget:
                continue
            out.append(trial)
        return out

    def counts(self, ids: Iterable[int] | None = None) -> dict[str, int]:
        """Number of trials per status (among ``ids`` when given)."""
        counts: dict[str, int] = {}
        for t in self.trials(ids=ids):
            counts[t.status] = counts.get(t.status, 0) + 1
        return counts

    def has_stage(self, stage: str) -> bool:
        return any(t.user_attrs["stage"] == stage for t in self._latest().values())
