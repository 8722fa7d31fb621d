"""The trial store: every proposed (architecture, budget), its status and metrics, in one database.

SQLAlchemy Core over a single ``trials`` table (plus a ``meta`` key/value table holding the
search's config, so a worker started on its own knows what to build). SQLite by default; any
SQLAlchemy URL (PostgreSQL for a cluster) works the same way.

Crash safety rests on three rules:

- every change is one transaction (a trial's metrics are written together with its status);
- a claim is ``UPDATE ... WHERE id = :id AND status = 'queued'`` checked by its row count, and
  stamps a fresh ``token``; heartbeats and results are accepted only with that token, so a
  worker that lost its trial (stale heartbeat, re-queued, claimed by another) cannot write it;
- a ``running`` trial whose heartbeat is older than ``stale_after`` seconds is re-queued by the
  next claimant or by the proposer: a killed worker's trial is run again, never left half done.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rankitect.space.arch import Arch

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED)

_meta = sa.MetaData()
trials = sa.Table(
    "trials",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("arch_key", sa.String(40), nullable=False),
    sa.Column("arch_json", sa.Text, nullable=False),
    sa.Column("budget", sa.BigInteger, nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("worker", sa.String(128)),
    sa.Column("token", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("heartbeat", sa.Float),
    sa.Column("metrics", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.UniqueConstraint("arch_key", "budget", name="uq_trials_arch_budget"),
)
meta_table = sa.Table(
    "meta",
    _meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def arch_key(arch: Arch) -> str:
    """A stable identity of an architecture: SHA-1 of its compact JSON."""
    return hashlib.sha1(arch.to_json(indent=None).encode()).hexdigest()


@dataclass(frozen=True)
class Trial:
    id: int
    arch: Arch
    arch_key: str
    budget: int
    stage: str
    status: str
    worker: str | None
    token: str | None
    attempts: int
    metrics: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: Any, arch_type: Any = Arch) -> Trial:
        return cls(
            id=row.id,
            arch=arch_type.from_json(row.arch_json),
            arch_key=row.arch_key,
            budget=int(row.budget),
            stage=row.stage,
            status=row.status,
            worker=row.worker,
            token=row.token,
            attempts=int(row.attempts),
            metrics=None if row.metrics is None else json.loads(row.metrics),
            error=row.error,
        )


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


class TrialStore:
    """A shared table of trials behind an SQLAlchemy URL (``sqlite:///path.db``,
    ``postgresql+psycopg://...``). Safe to open from many processes and machines.

    ``arch_type`` parses the stored ``arch_json`` back (its ``from_json``): `Arch` here, the
    AutoML search's `JointConfig` (architecture + hyper-parameters) there."""

    def __init__(self, url: str, *, busy_timeout_s: float = 60.0, arch_type: Any = Arch) -> None:
        self.url = url
        self.arch_type = arch_type
        is_sqlite = sa.make_url(url).get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout_s}
            # One connection per thread; processes open their own engine anyway.
            kwargs["poolclass"] = sa.pool.NullPool
        self.engine = sa.create_engine(url, **kwargs)
        if is_sqlite:
            _sqlite_immediate(self.engine)
        _meta.create_all(self.engine)

    @property
    def display_url(self) -> str:
        """The URL with its password hidden (safe to log and to write into results.json)."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # ---- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        with self.engine.begin() as conn:
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == key)
            ).scalar_one_or_none()
        return None if value is None else json.loads(value)

    def bind_config(self, key: str, config: dict[str, Any], what: str) -> None:
        """Record the search ``config`` under ``key``; a store that already holds a different
        one belongs to another search (``what`` names its keys in the error)."""
        previous = self.get_meta(key)
        if previous is not None and previous != config:
            raise ValueError(
                f"the trial store {self.display_url} holds a search with another {what} config; "
                "use a new method.store to start afresh"
            )
        self.set_meta(key, config)

    def set_meta(self, key: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True)
        with self.engine.begin() as conn:
            done = conn.execute(
                meta_table.update().where(meta_table.c.key == key).values(value=text)
            ).rowcount
            if not done:
                conn.execute(meta_table.insert().values(key=key, value=text))

    # ---- proposer side -------------------------------------------------------------------------

    def enqueue(self, archs: Sequence[Arch], budget: int, stage: str) -> list[int]:
        """Queue ``archs`` at ``budget`` in one transaction; an (arch, budget) already in the
        store, whatever its status, is not queued again. Returns the trial ids in order."""
        if budget < 1:
            raise ValueError(f"a trial budget must be >= 1 example, got {budget}")
        keys = [arch_key(a) for a in archs]
        now = time.time()
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    existing = dict(
                        conn.execute(
                            sa.select(trials.c.arch_key, trials.c.id).where(
                                trials.c.budget == budget, trials.c.arch_key.in_(set(keys))
                            )
                        ).all()
                    )
                    for arch, key in zip(archs, keys, strict=True):
                        if key in existing:
                            continue
                        existing[key] = conn.execute(
                            trials.insert().values(
                                arch_key=key,
                                arch_json=arch.to_json(indent=None),
                                budget=int(budget),
                                stage=stage,
                                status=QUEUED,
                                attempts=0,
                                created=now,
                                updated=now,
                            )
                        ).inserted_primary_key[0]
                return [existing[k] for k in keys]
            except IntegrityError:
                # Another proposer inserted one of these keys concurrently: read it back.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def requeue_stale(self, stale_after_s: float) -> int:
        """Re-queue running trials whose heartbeat is older than ``stale_after_s``."""
        now = time.time()
        with self.engine.begin() as conn:
            return conn.execute(
                trials.update()
                .where(trials.c.status == RUNNING, trials.c.heartbeat < now - stale_after_s)
                .values(status=QUEUED, worker=None, token=None, updated=now)
            ).rowcount

    # ---- worker side ---------------------------------------------------------------------------

    def claim(self, worker: str, stale_after_s: float | None = None) -> Trial | None:
        """Atomically take the oldest queued trial (re-queueing stale ones first), or None."""
        if stale_after_s is not None:
            self.requeue_stale(stale_after_s)
        for _ in range(16):
            with self.engine.begin() as conn:
                trial_id = conn.execute(
                    sa.select(trials.c.id)
                    .where(trials.c.status == QUEUED)
                    .order_by(trials.c.id)
                    .limit(1)
                ).scalar_one_or_none()
                if trial_id is None:
                    return None
                now = time.time()
                token = uuid.uuid4().hex
                claimed = conn.execute(
                    trials.update()
                    .where(trials.c.id == trial_id, trials.c.status == QUEUED)
                    .values(
                        status=RUNNING,
                        worker=worker,
                        token=token,
                        attempts=trials.c.attempts + 1,
                        heartbeat=now,
                        updated=now,
                    )
                ).rowcount
                if claimed == 1:
                    row = conn.execute(sa.select(trials).where(trials.c.id == trial_id)).one()
                    return Trial.from_row(row, self.arch_type)
            # Lost the race for this row to another worker (PostgreSQL READ COMMITTED): retry.
        return None

    def heartbeat(self, trial: Trial) -> bool:
        """Refresh ``trial``'s heartbeat; False when the worker no longer holds it."""
        return self._update_held(trial)

    def _update_held(self, trial: Trial, **values: Any) -> bool:
        """Update a running trial only while this worker's claim token still holds it."""
        now = time.time()
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    trials.update()
                    .where(
                        trials.c.id == trial.id,
                        trials.c.token == trial.token,
                        trials.c.status == RUNNING,
                    )
                    .values(updated=now, heartbeat=now, **values)
                ).rowcount
                == 1
            )

    def finish(self, trial: Trial, metrics: dict[str, Any]) -> bool:
        """Mark ``trial`` done with its metrics (one statement); False when it was lost."""
        return self._update_held(trial, status=DONE, metrics=json.dumps(metrics))

    def fail(self, trial: Trial, error: str) -> bool:
        """Mark ``trial`` failed with its error; False when the worker no longer holds it."""
        return self._update_held(trial, status=FAILED, error=error[-4000:])

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
        q = sa.select(trials).order_by(trials.c.id)
        if ids is not None:
            q = q.where(trials.c.id.in_(list(ids)))
        if status is not None:
            q = q.where(trials.c.status == status)
        if stage_prefix is not None:
            q = q.where(trials.c.stage.startswith(stage_prefix))
        if budget is not None:
            q = q.where(trials.c.budget == budget)
        with self.engine.begin() as conn:
            return [Trial.from_row(r, self.arch_type) for r in conn.execute(q).all()]

    def counts(self, ids: Iterable[int] | None = None) -> dict[str, int]:
        """Number of trials per status (among ``ids`` when given)."""
        q = sa.select(trials.c.status, sa.func.count()).group_by(trials.c.status)
        if ids is not None:
            q = q.where(trials.c.id.in_(list(ids)))
        with self.engine.begin() as conn:
            return {s: int(n) for s, n in conn.execute(q).all()}

    def has_stage(self, stage: str) -> bool:
        with self.engine.begin() as conn:
            return (
                conn.execute(sa.select(trials.c.id).where(trials.c.stage == stage).limit(1)).first()
                is not None
            )
