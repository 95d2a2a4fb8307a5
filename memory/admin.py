"""memory-admin: inspect and repair a memory-bot data folder.

Read commands open SQLite read-only (``mode=ro``), so they work beside a running bot and cannot
change data; each prints a table, or JSON with ``--json``. Commands that change data ask first
(or take ``--yes``); while another process owns the folder they are sent to it over its control
channel (``memory.control``), so the owner makes them under its own locks.
Each command opens the folder, makes one call and formats the answer; the logic is in
``memory.inspector`` and ``memory.MemorySystem``. Exit status: 0 ok, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from memory import (
    ConfigError,
    InvalidInputError,
    MemoryBotError,
    MemorySystem,
    Settings,
    UserNotFoundError,
    control,
    load_settings,
)
from memory.inspector import FAIL, USER_SORTS, Inspector, UserView, open_encoder, stored_model_of
from memory.ownership import LOCK_NAME, holder_pid
from memory.records import ErasureRecord
from memory.validation import MEMORY_KINDS

PROG = "memory-admin"
TEXT_WIDTH = 60
Handler = Callable[[argparse.Namespace, Settings, Path], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


class CommandError(Exception):
    """The command ran and failed, or was cancelled (exit 1)."""


# -- output ----------------------------------------------------------------------------------


def _json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _clip(text: str, width: int = TEXT_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[int] = ()) -> str:
    """Columns aligned with spaces; ``right`` holds the indexes of numeric columns."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _pairs(pairs: Iterable[tuple[str, object]]) -> str:
    items = list(pairs)
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in items)


# -- read commands ---------------------------------------------------------------------------


async def cmd_users(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        rows = await view.users(args.sort, args.limit)
    if args.json:
        _json([r.to_dict() for r in rows])
    elif not rows:
        print("(no users)")
    else:
        print(
            _table(
                ["user", "name", "conversations", "friendship", "memories", "version", "last seen"],
                (
                    [
                        r.user_id,
                        _clip(r.display_name, 30),
                        r.conversations,
                        r.friendship,
                        r.memories,
                        r.version,
                        _when(r.last_seen),
                    ]
                    for r in rows
                ),
                right={2, 3, 4, 5},
            )
        )
    return 0


def _show_text(shown: UserView) -> str:
    ctx = shown.context
    if ctx is None:
        return _pairs([("user", shown.user_id), ("context", "(none stored)"), ("memories", shown.memories)])
    lines = [
        _pairs(
            [
                ("user", ctx.user_id),
                ("name", ctx.display_name or "-"),
                ("version", f"{ctx.version} ({shown.versions} in history)"),
                ("conversations", ctx.conversations_count),
                ("friendship", ctx.friendship_level),
                ("first seen", _when(ctx.first_seen)),
                ("last seen", _when(ctx.last_seen)),
                ("memories", shown.memories),
                (
                    "preferences",
                    ", ".join(f"{k}={v}" for k, v in sorted(ctx.preferences.items())) or "-",
                ),
            ]
        )
    ]
    lines.append(f"recent exchanges ({len(ctx.recent)}):")
    for exchange in ctx.recent:
        lines.append(f"  {_when(exchange.at)}  user: {_clip(exchange.message)}")
        lines.append(f"  {' ' * 19}  bot:  {_clip(exchange.response)}")
    return "\n".join(lines)


async def cmd_show(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        shown = await view.show(args.user)
    if args.json:
        _json(shown.to_dict())
    else:
        print(_show_text(shown))
    return 0


def _change_text(change: Any) -> str:
    rest = {k: v for k, v in change.items() if k != "op"}
    body = orjson.dumps(rest, default=dict).decode() if rest else ""
    return _clip(f"{change.get('op', '?')} {body}".strip(), 80)


async def cmd_history(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        erasures = await view.erasures(args.user)
        try:
            entries = await view.history(args.user)
        except UserNotFoundError:
            if not erasures:
                raise
            entries = []  # forgotten: only the erasure log is left
    if args.json:
        _json([e.to_dict() for e in entries])
        return 0
    if entries:
        print(
            _table(
                ["version", "at", "actor", "change"],
                ([e.version, _when(e.at), e.actor, _change_text(e.change)] for e in entries),
                right={0},
            )
        )
    elif not erasures:
        print("(no history: this user has only memories)")
    if erasures:
        print(("\n" if entries else "") + "erasures (no content is kept of what was forgotten):")
        print(_erasure_table(erasures))
    return 0


def _erasure_table(erasures: Sequence[ErasureRecord]) -> str:
    return _table(
        ["at", "user", "actor", "request", "rows"],
        ([_when(e.at), e.user_id, e.actor, e.request, e.rows] for e in erasures),
        right={4},
    )


async def cmd_erasures(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        erasures = await view.erasures(args.user)
    if args.json:
        _json([e.to_dict() for e in erasures])
    elif not erasures:
        print("(no erasures recorded)")
    else:
        print(_erasure_table(erasures))
    return 0


async def cmd_memories(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        page = await view.memories(args.user, limit=args.limit, offset=args.offset)
    if args.json:
        _json([m.to_dict() for m in page.memories])
    elif not page.memories:
        print(f"(no memories at offset {page.offset}; the user has {page.total})")
    else:
        print(
            _table(
                ["id", "kind", "created", "text"],
                ([m.id, m.kind, _when(m.created_at), _clip(m.text)] for m in page.memories),
                right={0},
            )
        )
        last = page.offset + len(page.memories)
        more = f"; --offset {last} for more" if last < page.total else ""
        print(f"memories {page.offset + 1}-{last} of {page.total}{more}")
    return 0


def _progress_line(text: str) -> None:
    """Progress on stderr, so that stdout stays the command's answer (and --json parses)."""
    print(f"{PROG}: {text}" if not text.startswith("ready") else text, end="", file=sys.stderr, flush=True)


async def cmd_search(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings, progress=_progress_line) as view:
        results = await view.search(args.user, args.query, args.k, args.kind)
    if args.json:
        _json([r.to_dict() for r in results])
    elif not results:
        print("(nothing found)")
    else:
        print(
            _table(
                ["rank", "score", "rankers", "id", "kind", "text"],
                (
                    [
                        n,
                        f"{r.score:.3f}",
                        "+".join(r.rankers),
                        r.memory.id,
                        r.memory.kind,
                        _clip(r.memory.text),
                    ]
                    for n, r in enumerate(results, 1)
                ),
                right={0, 1, 3},
            )
        )
    return 0


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _stats_text(stats: dict[str, Any]) -> str:
    owner = stats["owner_pid"]
    counts = ["users", "history_rows", "memories", "lexical_rows", "embedded", "pending_embeddings"]
    snapshot, index = stats["snapshot"], stats["index"]
    return "\n\n".join(
        [
            _pairs(
                [
                    ("data folder", stats["data_dir"]),
                    (
                        "owner",
                        "none" if owner is None else f"process {owner}" if owner > 0 else "a process",
                    ),
                    ("schema version", stats["schema_version"]),
                    ("embedding model", stats["embedding_model"]),
                    *((name.replace("_", " "), stats[name]) for name in counts),
                ]
            ),
            "snapshot\n" + _pairs((f"  {k.replace('_', ' ')}", v) for k, v in snapshot.items()),
            "index\n" + _pairs((f"  {k.replace('_', ' ')}", v) for k, v in index.items()),
            "files\n"
            + _table(
                ["  file", "size"],
                [
                    *([f"  {name}", _size(size)] for name, size in stats["files"].items()),
                    ["  total", _size(stats["total_bytes"])],
                ],
                right={1},
            ),
        ]
    )


async def cmd_stats(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        stats = await view.stats()
    if args.json:
        _json(stats)
    else:
        print(_stats_text(stats))
    return 0


async def cmd_verify(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        owner = view.owner_pid()
        checks = await view.verify()
    failed = [c for c in checks if c.status == FAIL]
    if args.json:
        _json({"ok": not failed, "owner_pid": owner, "checks": [c.to_dict() for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status.upper():4}  {c.name.ljust(width)}  {c.detail}")
        print(
            f"{len(failed)} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed"
        )
    return 1 if failed else 0


async def cmd_export(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        document = await view.export_user(args.user)
    encoded = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    if args.output is None:
        print(encoded.decode(), end="")
        return 0
    try:
        args.output.write_bytes(encoded)
    except OSError as exc:
        raise CommandError(f"could not write {args.output}: {exc.strerror or exc}") from exc
    print(
        f"exported user {document['user_id']!r} ({len(document['memories'])} memories, "
        f"{len(document['history'])} versions) to {args.output}",
        file=sys.stderr,
    )
    return 0


# -- commands that change data ---------------------------------------------------------------


async def _change(settings: Settings, data_dir: Path, op: str, **params: Any) -> Any:
    """Make one change: through the owner's control channel when a process owns the folder
    (so it goes through that process's locks and is not undone by its next write), else
    directly, owning the folder meanwhile."""
    # PostgreSQL: no owner to go through; the database's version checks order every change.
    if settings.storage.backend != "postgres" and holder_pid(data_dir / LOCK_NAME) is not None:
        return await control.call(data_dir, op, params)
    async with _system(settings, data_dir) as system:
        return await control.apply(system, op, params)


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{args.command} changes data and stdin is not a terminal to confirm it; pass --yes")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("cancelled; nothing was changed")


@asynccontextmanager
async def _system(settings: Settings, data_dir: Path) -> AsyncIterator[MemorySystem]:
    """A started MemorySystem whose encoder made the stored embeddings (else it re-embeds all)."""
    # No change made here embeds (new memories are embedded by the next process with the
    # model): the encoder is the model's name only, and torch is never imported.
    encoder = await open_encoder(settings, await stored_model_of(data_dir, settings), load=False)
    # A change of one user does not wait for a check of the whole file (1-2.5 s at 100k
    # memories; the erasure's WAL truncation would wait for it): `memory-admin verify` does that.
    settings = settings.with_overrides({"storage": {"integrity_check_on_start": False}})
    try:
        async with MemorySystem(data_dir, settings=settings, encoder=encoder) as system:
            yield system
    finally:
        await encoder.close()


async def cmd_forget(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        shown = await view.show(args.user)
    _confirm(
        args,
        f"Forget everything about user {shown.user_id!r} ({shown.versions} versions, "
        f"{shown.memories} memories) in {data_dir}? This cannot be undone.",
    )
    await _change(settings, data_dir, "forget_user", user_id=shown.user_id, actor="admin")
    print(f"forgot user {shown.user_id!r}: {shown.versions} versions, {shown.memories} memories")
    return 0


async def cmd_rollback(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        shown = await view.require_version(args.user, args.version)
    _confirm(
        args,
        f"Make user {shown.user_id!r} equal to version {args.version} again "
        f"(as a new version after {shown.versions}) in {data_dir}?",
    )
    ctx = await _change(
        settings, data_dir, "rollback", user_id=shown.user_id, version=args.version, actor="admin"
    )
    print(f"user {ctx['user_id']!r} is now at version {ctx['version']}, equal to version {args.version}")
    return 0


async def cmd_import(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    try:
        document = orjson.loads(args.file.read_bytes())
    except OSError as exc:
        raise CommandError(f"could not read {args.file}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"{args.file} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CommandError(f"{args.file} is not a memory-bot export (not a JSON object)")
    memories = document.get("memories")
    count = len(memories) if isinstance(memories, list) else 0
    _confirm(
        args,
        f"Import user {document.get('user_id')!r} ({count} memories) from {args.file} into {data_dir}?",
    )
    done = await _change(settings, data_dir, "import_user", document=document, actor="admin")
    ctx = done["context"]
    version = f", context at version {ctx['version']}" if ctx else ", no context in the file"
    print(
        f"imported user {document.get('user_id')!r}: {done['memories_added']} of {count} memories "
        f"added (the others were already there){version}"
    )
    return 0


def _progress() -> Callable[[int, int], None]:
    """A bar on a terminal, else one line per step; both on stderr."""
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if tty:
            filled = 30 * done // total if total else 30
            end = "\n" if done >= total else ""
            print(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} vectors",
                end=end,
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"{PROG}: indexed {done}/{total} vectors", file=sys.stderr, flush=True)

    return report


async def cmd_rebuild_index(args: argparse.Namespace, settings: Settings, data_dir: Path) -> int:
    async with Inspector(data_dir, settings) as view:
        embedded = await view.embedded_count()
    _confirm(args, f"Rebuild the index of {data_dir} from {embedded} stored embeddings?")
    if holder_pid(data_dir / LOCK_NAME) is not None:
        vectors = (await control.call(data_dir, "rebuild_index", {}))["vectors"]
    else:
        async with _system(settings, data_dir) as system:
            vectors = await system.rebuild_index(progress=_progress())
    print(f"rebuilt the index: {vectors} vectors")
    return 0


# -- the parser ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # Folder options are accepted before or after the command; SUPPRESS keeps a subcommand's
    # unset option from overwriting the one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the data folder (default: storage.data_dir of the settings, 'data')",
    )
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="a TOML settings file, as given to the bot (default: MEMORY_BOT_CONFIG)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also log what the library does",
    )
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    changing = argparse.ArgumentParser(add_help=False)
    changing.add_argument("-y", "--yes", action="store_true", help="change the data without asking first")

    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None, parents=[common]
    )
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        title="commands",
        help="run COMMAND --help for its options",
    )

    def add(
        name: str, handler: Handler, summary: str, parents: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common, *parents])
        sub.set_defaults(handler=handler)
        return sub

    user_help = "the user id (a Discord id or any stored id)"
    sub = add("users", cmd_users, "list users with their counts and when they were last seen", [reading])
    sub.add_argument(
        "--sort",
        choices=list(USER_SORTS),
        default="id",
        help="order by this column (numbers and last-seen: largest first); default id",
    )
    sub.add_argument("--limit", type=_positive, help="show at most this many users")
    sub = add("show", cmd_show, "show one user's current context", [reading])
    sub.add_argument("user", help=user_help)
    sub = add(
        "history",
        cmd_history,
        "list every version of a user's context: time, actor, change",
        [reading],
    )
    sub.add_argument("user", help=user_help)
    sub = add(
        "erasures",
        cmd_erasures,
        "list the erasure log: every forget, who asked and how many rows (no content)",
        [reading],
    )
    sub.add_argument("user", nargs="?", help="only this user's erasures")
    sub = add(
        "memories",
        cmd_memories,
        "list a user's memories, oldest first, a page at a time",
        [reading],
    )
    sub.add_argument("user", help=user_help)
    sub.add_argument("--limit", type=_positive, default=20, help="memories per page (default 20)")
    sub.add_argument("--offset", type=_not_negative, default=0, help="memories to skip (default 0)")
    sub = add("search", cmd_search, "rank a user's memories for a query: score and rankers", [reading])
    sub.add_argument("user", help=user_help)
    sub.add_argument("query", help="the text to search for")
    sub.add_argument("-k", type=_positive, default=5, help="how many results (default 5)")
    sub.add_argument(
        "--kind",
        action="append",
        choices=sorted(MEMORY_KINDS),
        help="only memories of this kind (repeatable)",
    )
    add("stats", cmd_stats, "counts, snapshot and index information, and file sizes", [reading])
    add(
        "verify",
        cmd_verify,
        "check SQLite integrity, and the snapshot and index against the database; 1 on a failure",
        [reading],
    )
    sub = add(
        "export",
        cmd_export,
        "write everything stored about a user as JSON (import takes it back)",
        [],
    )
    sub.add_argument("user", help=user_help)
    sub.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    add(
        "rebuild-index",
        cmd_rebuild_index,
        "rebuild the vector index from the embeddings in SQLite",
        [changing],
    )
    sub = add(
        "import",
        cmd_import,
        "load a user exported by export (context as a new version, memories added)",
        [changing],
    )
    sub.add_argument("file", type=Path, help="a JSON file written by export")
    sub = add(
        "forget",
        cmd_forget,
        "remove everything about a user: context, history, memories, vectors",
        [changing],
    )
    sub.add_argument("user", help=user_help)
    sub = add(
        "rollback",
        cmd_rollback,
        "make a user's context equal to an earlier version (as a new version)",
        [changing],
    )
    sub.add_argument("user", help=user_help)
    sub.add_argument("version", type=_positive, help="the version to restore (see history)")
    return parser


# -- entry point -----------------------------------------------------------------------------


def _error(message: object) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    library_log = logging.getLogger("memory")
    library_log.addHandler(handler)
    previous_level = library_log.level
    library_log.setLevel(logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    try:
        settings = load_settings(getattr(args, "config", None))
        data_dir = Path(getattr(args, "data_dir", None) or settings.storage.data_dir)
        run: Handler = args.handler
        return asyncio.run(run(args, settings, data_dir))
    except (UsageError, InvalidInputError, ConfigError) as exc:
        _error(exc)
        return 2
    except (CommandError, MemoryBotError) as exc:
        _error(exc)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        library_log.removeHandler(handler)
        library_log.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
