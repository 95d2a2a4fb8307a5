"""The owner's control channel: changes an admin makes while a bot runs go through the bot.

The process that owns a data folder keeps every context in memory and writes it back, so a
change made beside it by another process would be undone by the owner's next write. Instead the
owner serves a Unix socket in the data folder (mode 0600; only its own user or root may
connect, checked again per connection with SO_PEERCRED), and the admin CLI sends its change
there, where it runs through the same locks as the bot's own. One request per connection, one
JSON line each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memory.errors import ControlChannelError, InvalidInputError, MemoryBotError, RemoteError

if TYPE_CHECKING:
    from memory.system import MemorySystem

log = logging.getLogger(__name__)
CONTROL_NAME = "memory-bot.sock"
MAX_REQUEST = 64 * 1024 * 1024  # an import document can be large
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with its NUL
CHANGES = ("forget_user", "forget_memory", "rollback", "import_user", "rebuild_index")


def control_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_NAME


def _required(args: Mapping[str, Any], name: str) -> Any:
    if name not in args:
        raise InvalidInputError(name, "is required")
    return args[name]


async def apply(system: MemorySystem, op: str, args: Mapping[str, Any]) -> Any:
    """Run one change on a started system; the JSON-safe result. Both paths use this: the
    owner for a request on its socket, the CLI on a folder nobody owns."""
    actor = args.get("actor", "admin")
    if op == "forget_user":
        return {"known": await system.forget_user(_required(args, "user_id"), actor=actor)}
    if op == "forget_memory":
        uid, memory_id = _required(args, "user_id"), _required(args, "memory_id")
        memory = await system.forget_memory(uid, memory_id, actor=actor)
        return memory.to_dict()
    if op == "rollback":
        ctx = await system.rollback(_required(args, "user_id"), _required(args, "version"), actor=actor)
        return ctx.to_dict()
    if op == "import_user":
        document = _required(args, "document")
        uid = document.get("user_id") if isinstance(document, Mapping) else None
        before = await system.count_memories(uid) if uid is not None else 0
        imported = await system.import_user(document, actor=actor)
        return {
            "context": imported.to_dict() if imported is not None else None,
            "memories_added": (await system.count_memories(uid) if uid is not None else 0) - before,
        }
    if op == "rebuild_index":
        return {"vectors": await system.rebuild_index()}
    raise InvalidInputError("control op", f"must be one of {list(CHANGES)}, got {op!r}")


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves ``apply`` on the folder's socket while the system runs."""

    def __init__(self, system: MemorySystem, data_dir: Path) -> None:
        self._system = system
        self.path = control_path(data_dir)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> bool:
        """Listen; False (and a warning) when the folder's path is too long for a socket."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            log.warning(
                "no control channel: the path %s is longer than a Unix socket allows (%d bytes); "
                "admin commands that change data must wait until this process stops",
                self.path,
                MAX_SOCKET_PATH,
            )
            return False
        # We own the folder, so a socket file left here is a dead owner's.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        previous = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(previous)
        self.path.chmod(0o600)
        return True

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            reply = await self._answer(reader, writer)
            writer.write(orjson.dumps(reply) + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("control channel: the client went away: %s", exc)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        uid = _peer_uid(writer)
        if uid is None or uid not in (os.getuid(), 0):
            log.warning("control channel: refused a connection from uid %s", uid)
            return _error(ControlChannelError("only the owner's user or root may use the control channel"))
        try:
            request = orjson.loads(await reader.readuntil(b"\n"))
        except (orjson.JSONDecodeError, asyncio.LimitOverrunError) as exc:
            return _error(InvalidInputError("control request", f"must be one JSON line: {exc}"))
        if not isinstance(request, dict) or not isinstance(request.get("args", {}), dict):
            return _error(InvalidInputError("control request", "must be an object with op and args"))
        op, args = request.get("op"), request.get("args", {})
        log.info("control channel: %s requested by uid %d", op, uid)
        try:
            return {"ok": True, "result": await apply(self._system, str(op), args)}
        except MemoryBotError as exc:
            return _error(exc)


def _error(exc: MemoryBotError) -> dict[str, Any]:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


async def call(data_dir: Path, op: str, args: Mapping[str, Any], *, timeout: float = 600.0) -> Any:
    """Send one change to the owner of ``data_dir``; its result, or its error re-raised here."""
    path = control_path(data_dir)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REQUEST)
            try:
                writer.write(orjson.dumps({"op": op, "args": dict(args)}) + b"\n")
                await writer.drain()
                line = await reader.readuntil(b"\n")
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ControlChannelError(
            f"the process that owns {data_dir} does not answer on its control channel {path} ({exc}); "
            "is it still starting, or too old to have one? Retry, or stop it and run the command again"
        ) from exc
    except TimeoutError as exc:
        raise ControlChannelError(f"the owner of {data_dir} did not answer within {timeout:.0f} s") from exc
    reply = orjson.loads(line)
    if not reply.get("ok"):
        raise RemoteError(str(reply.get("error")), str(reply.get("message")))
    return reply.get("result")
