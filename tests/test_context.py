from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory import Exchange, InvalidInputError, UserContext

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_context(**changes: object) -> UserContext:
    base = UserContext.new("alice", NOW).copy_with(
        preferences={"food": "pizza"}, recent=[Exchange("hi", "hello", NOW)], version=3
    )
    return base.copy_with(**changes)


def test_assigning_any_field_raises_frozen_instance_error() -> None:
    ctx = make_context()
    for field in dataclasses.fields(ctx):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ctx, field.name, getattr(ctx, field.name))


def test_preferences_cannot_be_mutated() -> None:
    ctx = make_context()
    with pytest.raises(TypeError):
        ctx.preferences["food"] = "soup"  # type: ignore[index]
    with pytest.raises(TypeError):
        del ctx.preferences["food"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        ctx.preferences._data = {}
    assert ctx.preferences["food"] == "pizza"


def test_recent_cannot_be_mutated() -> None:
    ctx = make_context()
    with pytest.raises(AttributeError):
        ctx.recent.append(Exchange("a", "b", NOW))  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.recent[0].message = "changed"  # type: ignore[misc]
    assert ctx.recent[0].message == "hi"


def test_copy_with_leaves_the_original_unchanged() -> None:
    ctx = make_context()
    source = {"food": "pizza"}
    changed = ctx.copy_with(conversations_count=9, preferences=source)
    source["food"] = "mutated after the fact"
    assert ctx.conversations_count == 0
    assert changed.conversations_count == 9
    assert changed.preferences["food"] == "pizza"


def test_copy_with_validates() -> None:
    ctx = make_context()
    with pytest.raises(InvalidInputError, match="friendship_level"):
        ctx.copy_with(friendship_level=101)
    with pytest.raises(InvalidInputError, match="unknown field"):
        ctx.copy_with(mood="happy")
    with pytest.raises(InvalidInputError, match="user_id"):
        ctx.copy_with(user_id="bob")
    with pytest.raises(InvalidInputError, match="preference"):
        ctx.copy_with(preferences={"food": ["a", "list"]})
    with pytest.raises(InvalidInputError, match="64 bits"):
        ctx.copy_with(preferences={"big": 2**64})
    with pytest.raises(InvalidInputError, match="preference 'x'"):
        ctx.copy_with(preferences={"x": "\ud800"})
    with pytest.raises(InvalidInputError, match="finite"):
        ctx.copy_with(preferences={"x": float("nan")})
    with pytest.raises(InvalidInputError, match="last_seen"):
        ctx.copy_with(last_seen=datetime(2026, 1, 1))


def test_contexts_are_hashable_and_compare_by_value() -> None:
    assert make_context() == make_context()
    assert hash(make_context()) == hash(make_context())
    assert make_context() != make_context(version=4)


text = st.text(max_size=40)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
no_nul = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=40
)
pref_values = st.one_of(
    no_nul,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    name=st.text(max_size=100),
    count=st.integers(min_value=0, max_value=2**63 - 1),
    level=st.integers(min_value=0, max_value=100),
    prefs=st.dictionaries(st.text(min_size=1, max_size=20).filter(str.strip), pref_values, max_size=5),
    recent=st.lists(st.tuples(text, text, times), max_size=4),
    first=times,
    delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=999)),
)
def test_dict_round_trip_is_lossless(
    name: str,
    count: int,
    level: int,
    prefs: dict[str, object],
    recent: list[tuple[str, str, datetime]],
    first: datetime,
    delta: timedelta,
) -> None:
    ctx = UserContext(
        "user-1",
        name,
        count,
        level,
        prefs,  # type: ignore[arg-type]
        tuple(Exchange(m, r, t) for m, r, t in recent),
        first,
        first + delta,
        7,
    )
    again = UserContext.from_dict(ctx.to_dict())
    assert again == ctx
    assert ctx.to_json() == orjson.dumps(ctx.to_dict())  # the fast encoding is the same JSON
    assert again.to_dict() == ctx.to_dict()


def test_from_dict_names_what_is_missing() -> None:
    data = make_context().to_dict()
    del data["version"]
    with pytest.raises(InvalidInputError, match="version"):
        UserContext.from_dict(data)
