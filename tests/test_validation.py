"""Every public method of MemorySystem refuses bad input with InvalidInputError and changes nothing.

One catalogue of bad values per kind of value; one table of every public method and the kind
of each of its parameters. Each case calls the method with one bad value (the others valid)
and compares the whole state before and after: contexts, history, memories, the erasure log,
stats counts and the rows committed in the database file.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from memory import InvalidInputError, MemorySystem, Settings
from memory.recovery import DB_NAME
from memory.storage.sqlite_connection import sqlite3
from tests.postgres_fixtures import database_rows as postgres_rows

MAX_TEXT = Settings().limits.max_text_length
WEST = timezone(timedelta(hours=-5))
EAST = timezone(timedelta(hours=5))


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


class Unprintable:
    """An object whose str() fails: a validator must not rely on str() of what it refuses."""

    def __str__(self) -> str:
        raise RuntimeError("str() of a bad value was called")

    __repr__ = __str__


_TEXT_BAD: list[Any] = [None, 5, 1.5, b"bytes", ["text"], "x" * (MAX_TEXT + 1), "nul\x00", "lone \ud800"]

BAD: dict[str, list[Any]] = {
    "user_id": [
        "",
        "   ",
        "\t\n",
        "x" * 129,
        "bad\nid",
        "nul\x00",
        "lone\ud800",
        10**128,
        10**200,
        10**5000,
        -1,
        True,
        None,
        3.5,
        b"alice",
        ["alice"],
        Unprintable(),
    ],
    "required_text": [*_TEXT_BAD, "", "   \n"],
    "name": [5, b"Al", "x" * 101, "nul\x00", "lone\ud800", ["Al"]],
    "required_name": [None, 5, "x" * 101, "nul\x00", "", "   "],
    "preference_key": [None, 5, "", "  ", "k" * 65, "nul\x00", "lone\ud800", ("k",)],
    "preference_value": [
        ["list"],
        {"a": 1},
        float("nan"),
        float("inf"),
        2**63,
        -(2**63) - 1,
        "x" * 501,
        "nul\x00",
        "lone\ud800",
        b"bytes",
        Unprintable(),
    ],
    "preference_changes": [
        5,
        "food=jazz",
        [("food", "jazz")],
        {"": "jazz"},
        {5: "jazz"},
        {"food": ["jazz"]},
        {"k" * 65: 1},
        {"food": "x" * 501},
        {f"k{i}": i for i in range(101)},  # limits.max_preferences
        lambda current: 5,
        lambda current: {"food": float("nan")},
    ],
    "positive_int": [0, -1, 2**63, 10**5000, True, 1.0, "1", None, Unprintable()],
    "offset": [-1, 2**63, 10**5000, False, 0.0, "0", None],
    "k": [0, -1, 51, 2**63, True, 2.0, "5", None],
    "actor": [None, "", "   ", 5, "x" * 101, "a\nb", "nul\x00", "lone\ud800", b"api", Unprintable()],
    "kind": ["dream", "FACT", "", None, 5, [], ["fact"], Unprintable()],
    "kinds": ["fact", b"fact", 5, [], ["dream"], [5], [[]], [None], Unprintable()],
    "datetime": [
        datetime(2024, 1, 1),
        "2024-01-01T00:00:00+00:00",
        5,
        datetime.max.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=WEST),
        datetime.min.replace(tzinfo=EAST),
        datetime.min.replace(tzinfo=UTC),
        datetime(1969, 12, 31, tzinfo=UTC),
        datetime(3000, 1, 1, tzinfo=UTC),
    ],
    "metadata": [
        [1],
        "x",
        5,
        {1: "a"},
        {"a": object()},
        {"big": "x" * 20_000},
        {"n": 2**64},
        Unprintable(),
    ],
    "source_id": ["", "   ", "x" * 201, "nul\x00", True, 3.5, -1, 10**200, 10**5000, b"m", ["m"]],
    "callback": [5, "print", [print], Unprintable()],
    "scope": ["", "   ", "x" * 101, "nul\x00", "lone\ud800", 5, None, b"dm", ["dm"], Unprintable()],
    "scopes": ["dm", b"dm", 5, [""], [5], [None], ["x" * 101], Unprintable()],
    "seconds": [-1, -0.5, True, "5", float("nan"), float("inf"), 10**5000, [1], Unprintable()],
}


def _document(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    """A bad import document: the valid export with one part replaced."""

    def make(valid: dict[str, Any]) -> Any:
        document = {**valid, **changes}
        return document

    return make


def _memory(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    def make(valid: dict[str, Any]) -> Any:
        first = {**valid["memories"][0], **changes}
        return {**valid, "memories": [first, *valid["memories"][1:]]}

    return make


def _context(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    def make(valid: dict[str, Any]) -> Any:
        return {**valid, "context": {**valid["context"], **changes}}

    return make


def _exchange(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    def make(valid: dict[str, Any]) -> Any:
        recent = valid["context"]["recent"]
        return {**valid, "context": {**valid["context"], "recent": [{**recent[0], **changes}, *recent[1:]]}}

    return make


def _unmemorised(key: str) -> Callable[[dict[str, Any]], Any]:
    def make(valid: dict[str, Any]) -> Any:
        first = {k: v for k, v in valid["memories"][0].items() if k != key}
        return {**valid, "memories": [first, *valid["memories"][1:]]}

    return make


# Bad import documents, each made from a valid export of the seeded user.
BAD_DOCUMENTS: list[Callable[[dict[str, Any]], Any]] = [
    lambda valid: None,
    lambda valid: [valid],
    lambda valid: "export",
    _document(format="memory-bot-user-export/0"),
    _document(user_id="   "),
    _document(user_id=10**5000),
    _document(user_id="bob"),  # the context belongs to alice
    _document(memories={"0": "not a list"}),
    _document(memories=["not an object"]),
    _document(context=[]),
    _context(preferences=[["food", "jazz"]]),
    _context(preferences={f"k{i}": "v" for i in range(500)}),  # limits.max_preferences is 100
    _context(recent="hi"),
    _context(recent=[{"message": "m", "response": "r", "at": "2024-01-01T00:00:00+00:00"}] * 11),
    _context(recent=["hi"]),
    _context(last_seen="9999-12-31T23:59:59-05:00"),
    _context(first_seen="yesterday"),
    _context(display_name=5),
    _context(friendship_level=101),
    _context(version=2**63),
    _exchange(message=None),
    _exchange(message=5),
    _exchange(response="x" * (MAX_TEXT + 1)),
    _exchange(message="nul\x00"),
    _exchange(at="not a time"),
    _memory(text=""),
    _memory(text=None),
    _memory(text="x" * (MAX_TEXT + 1)),
    _memory(kind=[]),
    _memory(kind="dream"),
    _memory(created_at="9999-12-31T23:59:59.999999-05:00"),
    _memory(created_at="0001-01-01T00:00:00+05:00"),
    _memory(created_at="1900-01-01T00:00:00+00:00"),
    _memory(created_at=5),
    _memory(metadata=[1]),
    _memory(metadata={"n": 2**64}),
    _memory(source_id=10**5000),
    _memory(source_id=""),
    _memory(key=5),
    _unmemorised("created_at"),
]


EXPORT = object()  # stands for the valid export of the seeded user in Method.valid


@dataclass
class Method:
    """One public method: valid arguments and the kind of value each parameter takes."""

    name: str
    valid: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()  # None is a valid value of these

    def bad_values(self, param: str) -> list[Any]:
        values = BAD[self.kinds[param]]
        return [v for v in values if not (v is None and param in self.optional)]


METHODS = [
    Method("get_user_context", {"user_id": "alice"}, {"user_id": "user_id"}),
    Method(
        "update_context",
        {"user_id": "alice", "message": "m", "response": "r"},
        {
            "user_id": "user_id",
            "message": "required_text",
            "response": "required_text",
            "display_name": "name",
            "preferences": "preference_changes",
            "source_id": "source_id",
            "metadata": "metadata",
            "actor": "actor",
            "scope": "scope",
        },
        frozenset({"display_name", "preferences", "source_id", "metadata"}),
    ),
    Method(
        "set_preference",
        {"user_id": "alice", "key": "food", "value": "jazz"},
        {"user_id": "user_id", "key": "preference_key", "value": "preference_value", "actor": "actor"},
    ),
    Method(
        "set_display_name",
        {"user_id": "alice", "name": "Al"},
        {"user_id": "user_id", "name": "required_name", "actor": "actor"},
    ),
    Method("history", {"user_id": "alice"}, {"user_id": "user_id"}),
    Method(
        "rollback",
        {"user_id": "alice", "version": 1},
        {"user_id": "user_id", "version": "positive_int", "actor": "actor"},
    ),
    Method("list_users"),
    Method(
        "save_memory",
        {"user_id": "alice", "text": "a note"},
        {
            "user_id": "user_id",
            "text": "required_text",
            "kind": "kind",
            "metadata": "metadata",
            "created_at": "datetime",
            "source_id": "source_id",
            "scope": "scope",
        },
        frozenset({"metadata", "created_at", "source_id"}),
    ),
    Method(
        "get_memories",
        {"user_id": "alice"},
        {
            "user_id": "user_id",
            "limit": "positive_int",
            "offset": "offset",
            "kinds": "kinds",
            "scopes": "scopes",
        },
        frozenset({"limit", "kinds", "scopes"}),
    ),
    Method("memory_scopes", {"user_id": "alice"}, {"user_id": "user_id"}),
    Method(
        "forget_scope",
        {"scope": "guild:1"},
        {"scope": "scope", "user_id": "user_id", "actor": "actor"},
        frozenset({"user_id"}),
    ),
    Method(
        "prune_before",
        {"cutoff": datetime.now(UTC) - timedelta(days=1)},
        {"cutoff": "datetime", "actor": "actor"},
    ),
    Method(
        "edit_source",
        {"source_id": "msg-1", "message": "new words"},
        {"source_id": "source_id", "message": "required_text", "actor": "actor"},
    ),
    Method("count_memories", {"user_id": "alice"}, {"user_id": "user_id"}),
    Method(
        "forget_memory",
        {"user_id": "alice", "memory_id": 1},
        {"user_id": "user_id", "memory_id": "positive_int", "actor": "actor"},
    ),
    Method("forget_source", {"source_id": "msg-1"}, {"source_id": "source_id", "actor": "actor"}),
    Method("forget_user", {"user_id": "alice"}, {"user_id": "user_id", "actor": "actor"}),
    Method("erasures", {}, {"user_id": "user_id"}, frozenset({"user_id"})),
    Method(
        "retrieve_memory",
        {"user_id": "alice", "query": "jazz"},
        {"user_id": "user_id", "query": "required_text", "k": "k", "kinds": "kinds", "scopes": "scopes"},
        frozenset({"kinds", "scopes"}),
    ),
    Method("rebuild_index", {}, {"progress": "callback"}, frozenset({"progress"})),
    Method("export_user", {"user_id": "alice"}, {"user_id": "user_id"}),
    Method("import_user", {"data": EXPORT}, {"data": "document", "actor": "actor"}),
    Method("stats"),
    Method("health"),
    Method("wait_ready", {}, {"timeout": "seconds"}, frozenset({"timeout"})),
    Method("integrity_checked"),
    Method("start"),  # no parameters; a second start is refused as the lifecycle's business
    Method("close"),
]


# FTS5 keeps its index as segments that the store merges in the background: their layout
# changes without any change of content. The indexed text itself is in memories_fts_content.
FTS_LAYOUT = ("memories_fts_data", "memories_fts_idx")


def database_rows(path: Path) -> list[str]:
    """Every committed row of the database file, as text, read by a separate connection.

    Read with the store's own SQLite (sqlean), not the standard library's: a second SQLite
    library in one process does not share the file's POSIX locks with the first, so closing
    its connection can drop the writer's locks and empty the WAL index under it (a bus error
    in CI). Virtual tables are read through their shadow tables, as a dump would.
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
        lines = []
        for name, sql in tables:
            virtual = str(sql or "").upper().startswith("CREATE VIRTUAL TABLE")
            internal = name.startswith("sqlite_") and name != "sqlite_sequence"
            if virtual or internal or name in FTS_LAYOUT:
                continue
            lines += sorted(f"{name}: {row!r}" for row in db.execute(f'SELECT * FROM "{name}"'))
        return lines
    finally:
        db.close()


async def whole_state(ms: MemorySystem) -> dict[str, Any]:
    users = await ms.list_users()
    for uid in users:  # a retrieve waits until the user's memories are embedded (and stored)
        await ms.retrieve_memory(uid, "settle")
    stats = await ms.stats()
    state: dict[str, Any] = {
        "users": users,
        "counts": {key: stats[key] for key in ("users", "memories", "history_rows")},
        "erasures": [record.to_dict() for record in await ms.erasures()],
        "rows": (
            await postgres_rows(ms.settings.storage.postgres_url)
            if ms.settings.storage.backend == "postgres"
            else database_rows(ms.data_dir / DB_NAME)
        ),
    }
    for uid in users:
        state[uid] = {
            "context": (await ms.get_user_context(uid)).to_dict(),
            "history": [entry.to_dict() for entry in await ms.history(uid)],
            "memories": [m.to_dict() for m in await ms.get_memories(uid)],
            "count": await ms.count_memories(uid),
        }
    return state


async def seed(ms: MemorySystem) -> dict[str, Any]:
    """Two users with contexts, history and memories; returns a valid export of alice."""
    await ms.save_memory("alice", "alice likes jazz", kind="fact", source_id="msg-1")  # id 1
    await ms.update_context("alice", "I love jazz", "Noted", display_name="Alice")
    await ms.set_preference("alice", "music", "jazz")
    await ms.update_context("bob", "hi", "hello")
    await ms.save_memory("bob", "bob plays chess")
    return await ms.export_user("alice")


def test_the_table_names_every_public_method() -> None:
    public = {
        name for name, _ in inspect.getmembers(MemorySystem, inspect.isfunction) if not name.startswith("_")
    }
    assert public == {m.name for m in METHODS}
    for method in METHODS:
        signature = inspect.signature(getattr(MemorySystem, method.name))
        params = set(signature.parameters) - {"self"}
        assert params == set(method.kinds), f"{method.name}: the table's parameters are stale"


@pytest.mark.parametrize("method", [m for m in METHODS if m.kinds], ids=lambda m: m.name)
async def test_bad_input_is_refused_and_changes_nothing(ms: MemorySystem, method: Method) -> None:
    valid_export = await seed(ms)
    call = getattr(ms, method.name)
    misbehaviours: list[str] = []
    cases = 0
    for param in method.kinds:
        bad_values: list[tuple[str, Any]]
        if method.kinds[param] == "document":
            bad_values = [(f"BAD_DOCUMENTS[{i}]", make(valid_export)) for i, make in enumerate(BAD_DOCUMENTS)]
        else:
            bad_values = [(_short(bad), bad) for bad in method.bad_values(param)]
        for label, bad in bad_values:
            cases += 1
            valid = {name: valid_export if v is EXPORT else v for name, v in method.valid.items()}
            arguments = {**valid, param: bad}
            before = await whole_state(ms)
            shown = f"{method.name}({param}={label})"
            try:
                await asyncio.wait_for(call(**arguments), timeout=10)
            except InvalidInputError as exc:
                if not str(exc).startswith("invalid "):
                    misbehaviours.append(f"{shown}: message does not name the field: {exc}")
            except Exception as exc:  # every foreign error is what this test reports
                misbehaviours.append(f"{shown}: raised {type(exc).__name__}: {exc!s:.200}")
            else:
                misbehaviours.append(f"{shown}: accepted")
            after = await whole_state(ms)
            if after != before:
                changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
                misbehaviours.append(f"{shown}: changed the state ({', '.join(changed)})")
                if "rows" in changed:
                    misbehaviours.append(str(set(before["rows"]) ^ set(after["rows"]))[:300])
    assert not misbehaviours, "\n".join(misbehaviours)
    assert cases >= len(method.kinds) * 4
    # Nothing was left half-done: no lock held, the system still takes a valid change.
    ctx = await asyncio.wait_for(ms.update_context("alice", "still there?", "yes"), timeout=10)
    assert ctx.conversations_count == 2


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RuntimeError:
        return "<unprintable>"
    except ValueError:  # an int too long for str(), possibly inside a container
        return "<an int of more than 4,300 digits>"
    return text if len(text) <= 60 else text[:57] + "..."


@pytest.mark.parametrize(
    ("arguments", "field_name"),
    [
        ({"data_dir": 5}, "data_dir"),
        ({"data_dir": b"data"}, "data_dir"),
        ({"data_dir": ""}, "data_dir"),
        ({"data_dir": "da\x00ta"}, "data_dir"),
        ({"settings": "FULL"}, "settings"),
        ({"settings": {"limits": {}}}, "settings"),
        ({"config_file": 5}, "config_file"),
        ({"take_ownership": "yes"}, "take_ownership"),
    ],
)
def test_the_constructor_refuses_bad_arguments_and_creates_nothing(
    tmp_path: Path, arguments: dict[str, Any], field_name: str
) -> None:
    base: dict[str, Any] = {"data_dir": tmp_path / "data"}
    with pytest.raises(InvalidInputError) as info:
        MemorySystem(**{**base, **arguments})
    assert info.value.field == field_name
    assert list(tmp_path.iterdir()) == []


async def test_integer_user_ids_are_bounded_by_digits_not_by_str(ms: MemorySystem) -> None:
    longest = 10**128 - 1  # 128 digits
    ctx = await ms.update_context(longest, "m", "r")
    assert ctx.user_id == "9" * 128
    with pytest.raises(InvalidInputError, match="at most 128 digits"):
        await ms.update_context(10**128, "m", "r")
    with pytest.raises(InvalidInputError, match="at most 128 digits"):
        await ms.get_user_context(10**5000)  # str() of it would raise ValueError
    assert await ms.list_users() == ["9" * 128]


async def test_whitespace_only_user_ids_are_refused(ms: MemorySystem) -> None:
    for blank in (" ", "   ", "\u3000"):
        with pytest.raises(InvalidInputError, match="whitespace"):
            await ms.update_context(blank, "m", "r")
    assert await ms.list_users() == []


async def test_removing_a_preference_is_allowed_above_the_limit(
    make_system: Callable[..., MemorySystem],
) -> None:
    async with make_system(limits={"max_preferences": 4}) as ms:
        for i in range(4):
            await ms.set_preference("alice", f"k{i}", i)
        with pytest.raises(InvalidInputError, match="at most 4"):
            await ms.set_preference("alice", "k9", 9)
    async with make_system(limits={"max_preferences": 2}) as ms:  # the limit was lowered
        ctx = await ms.set_preference("alice", "k0", "changed")  # a key it has may still change
        assert ctx.preferences["k0"] == "changed"
        with pytest.raises(InvalidInputError, match="at most 2"):
            await ms.set_preference("alice", "k9", 9)
        for i in range(4):
            ctx = await ms.set_preference("alice", f"k{i}", None)
        assert dict(ctx.preferences) == {}
        await ms.set_preference("alice", "k9", 9)
        assert dict((await ms.get_user_context("alice")).preferences) == {"k9": 9}


async def test_kinds_filter_is_a_collection_of_kinds(ms: MemorySystem) -> None:
    fact = await ms.save_memory("alice", "alice likes jazz", kind="fact")
    await ms.save_memory("alice", "alice went out", kind="note")
    assert [m.id for m in await ms.get_memories("alice", kinds=["fact"])] == [fact.id]
    assert [m.id for m in await ms.get_memories("alice", kinds=iter(("fact",)))] == [fact.id]
    with pytest.raises(InvalidInputError, match=r"list of kinds such as \['fact'\]"):
        await ms.get_memories("alice", kinds="fact")  # once silently []
    found = await ms.retrieve_memory("alice", "jazz", kinds=("fact",))
    assert [r.memory.id for r in found] == [fact.id]


async def test_times_are_kept_in_a_range_every_later_computation_can_use(ms: MemorySystem) -> None:
    then = datetime(2020, 5, 17, 12, 0, tzinfo=EAST)
    memory = await ms.save_memory("alice", "a note from then", created_at=then)
    assert memory.created_at == then and memory.created_at.tzinfo == UTC
    for bad in (datetime.max.replace(tzinfo=UTC), datetime.max.replace(tzinfo=WEST)):
        with pytest.raises(InvalidInputError, match="created_at"):
            await ms.save_memory("alice", "far future", created_at=bad)
    assert [r.memory.id for r in await ms.retrieve_memory("alice", "note")] == [memory.id]
