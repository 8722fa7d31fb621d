"""Suite-wide settings."""

from __future__ import annotations

import os
import uuid

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_process():
    """Tests are small and often run several processes (DDP, CLI) on a 2-core machine, where
    intra-op threads oversubscribe the cores and slow small kernels many times over."""
    previous = torch.get_num_threads()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server for the session (the ``pgserver`` wheel's binaries), stopped at
    the end. Skipped with the reason where none can be started; under CI it must start."""
    try:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as err:  # no wheel for this platform, or the server would not start
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server could be started here: {err!r}")
    yield server
    server.cleanup()


@pytest.fixture()
def store_url(request, tmp_path):
    """A fresh trial-store URL of the kind ``request.param`` (sqlite, postgresql or journal); for
    ``postgresql`` a new database on `postgres_server`."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'trials.db'}"
    if kind == "journal":
        return f"journal://{tmp_path / 'trials.log'}"
    server = request.getfixturevalue("postgres_server")
    name = f"t{uuid.uuid4().hex[:16]}"
    server.psql(f"CREATE DATABASE {name};")
    return f"postgresql+psycopg://postgres:@/{name}?host={server.pgdata}"
