"""A terminal chat through the same pipeline and commands as the Discord bot.

Works interactively (a prompt; ``/quit`` leaves) and with a pipe (reads lines until end of
input). Either way it ends by closing the MemorySystem, which writes the final snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.actions import MemoryActions
from bot.formatting import ActionError, friendly_error
from bot.pipeline import ChatPipeline
from bot.responder import Responder
from memory import MemoryBotError, MemorySystem

log = logging.getLogger(__name__)
HELP = """Commands:
  /remember TEXT        remember a note
  /recall QUERY         search what I remember about you
  /forget ID            forget one memory (ids come from /recall)
  /forget all           forget everything about you (asks to confirm)
  /profile              what I know about you
  /export [FILE]        write your data to a JSON file
  /help                 this list
  /quit                 leave (end of input does the same)
Anything else is chat."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    user_id: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> ConsoleUser:
        """``ID`` or ``ID:NAME``; the name defaults to the id."""
        user_id, _, name = spec.partition(":")
        user_id, name = user_id.strip(), name.strip()
        if not user_id:
            raise ValueError("--user needs an id, as ID or ID:NAME")
        return cls(user_id, name or user_id)


class LineReader:
    """Reads lines in a daemon thread, so a blocked read never holds up shutdown."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    async def readline(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                line = self._stream.readline()
            except (OSError, ValueError) as exc:  # closed or broken stdin ends the chat
                log.info("stdin failed: %s", exc)
                line = ""
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, line)

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        line = await future
        return None if line == "" else line.rstrip("\r\n")


def _settle(future: asyncio.Future[str], line: str) -> None:
    if not future.done():
        future.set_result(line)


class ConsoleChat:
    """One console session: chat lines go to the pipeline, /commands to the actions."""

    def __init__(
        self,
        pipeline: ChatPipeline,
        actions: MemoryActions,
        user: ConsoleUser,
        out: TextIO,
    ) -> None:
        self.pipeline = pipeline
        self.actions = actions
        self.user = user
        self.out = out
        self._source = 0

    def say(self, text: str) -> None:
        self.out.write(f"bot> {text}\n")
        self.out.flush()

    async def handle(self, line: str) -> bool:
        """Answer one line; False when the person asked to quit."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("/"):
                return await self._command(line)
            self.say(await self.pipeline.handle(self.user.user_id, self.user.name, line))
        except (ActionError, MemoryBotError) as exc:
            log.info("console request %r refused: %s", line[:80], exc, exc_info=True)
            self.say(friendly_error(exc))
        return True

    async def _command(self, line: str) -> bool:
        name, _, rest = line[1:].partition(" ")
        name, rest = name.lower(), rest.strip()
        uid = self.user.user_id
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.out.write(HELP + "\n")
        elif name == "remember":
            self.say(await self.actions.remember(uid, rest))
        elif name == "recall":
            self.say(await self.actions.recall(uid, rest))
        elif name == "forget":
            words = rest.split()
            if not words:
                raise ActionError("Usage: /forget ID, or /forget all")
            confirm = words[1] if len(words) > 1 else None
            self.say(await self.actions.forget(uid, words[0], confirm, prefix="/"))
        elif name == "profile":
            self.say(await self.actions.profile(uid))
        elif name == "export":
            filename, payload = await self.actions.export(uid)
            path = Path(rest or filename)
            try:
                await asyncio.to_thread(path.write_bytes, payload)
            except OSError as exc:
                raise ActionError(export_failure(path, exc)) from exc
            self.say(f"Your data is in {path} ({len(payload):,} bytes).")
        else:
            self.say(f"I don't know /{name}; /help lists the commands.")
        return True


def export_failure(path: Path, exc: OSError) -> str:
    """One line saying why ``/export`` could not write ``path`` and what to try instead."""
    if isinstance(exc, IsADirectoryError):
        problem = "that is a folder; give a file name, e.g. /export my-data.json"
    elif isinstance(exc, FileNotFoundError):
        problem = f"the folder {path.parent} does not exist; create it or choose another path"
    else:
        problem = f"{exc.strerror or exc}; choose another path"
    return f"I couldn't write your data to {path}: {problem}."


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` instead of killing the process mid-write."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.debug("cannot handle %s here", sig.name)
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def announce_model(memory: MemorySystem, err: TextIO) -> None:
    """One progress line while the model loads in the background (chat works meanwhile)."""
    started = time.perf_counter()
    err.write("memory-bot: loading the embedding model… ")
    err.flush()
    try:
        if await memory.wait_ready():
            err.write(f"ready in {time.perf_counter() - started:.1f} s\n")
        else:
            reason = (await memory.stats()).get("encoder_error")
            err.write(f"failed, memories are searched by their words only: {reason}\n")
    except MemoryBotError as exc:  # the system failed meanwhile: the chat reports it too
        err.write(f"not loaded: {exc}\n")
    err.flush()


async def run_console(
    memory: MemorySystem,
    responder: Responder,
    user: ConsoleUser,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    """Chat until /quit, end of input, or a signal; the memory is closed (saved) at the end."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    interactive = stdin.isatty()
    stop = asyncio.Event()
    async with memory:
        chat = ConsoleChat(ChatPipeline(memory, responder), MemoryActions(memory), user, out)
        out.write(
            f"memory-bot console: talking as {user.name} (id {user.user_id}); "
            "/help lists commands, /quit leaves.\n"
        )
        reader = LineReader(stdin)
        announcing = asyncio.ensure_future(announce_model(memory, sys.stderr))
        try:
            with stop_on_signals(stop):
                while not stop.is_set():
                    if interactive:
                        out.write("you> ")
                    out.flush()
                    line = await _next_line(reader, stop)
                    if line is None:
                        break
                    if not interactive:
                        out.write(f"you> {line}\n")
                    if not await chat.handle(line):
                        break
        finally:
            announcing.cancel()
            await responder.close()
    if interactive:
        out.write("\n")
    out.write("bye! (memory saved)\n")
    out.flush()


async def _next_line(reader: LineReader, stop: asyncio.Event) -> str | None:
    read = asyncio.ensure_future(reader.readline())
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (read, stopped):
        if task not in done:
            task.cancel()
    if read in done:
        return read.result()
    return None
