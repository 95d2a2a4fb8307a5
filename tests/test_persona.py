"""Friendship tiers and preference extraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.persona import (
    MAX_VALUE_LENGTH,
    RULES,
    Preference,
    clauses,
    extract_preferences,
    friendship_tier,
    preference_changes,
)


def test_friendship_tiers_rise_with_the_level_and_are_bounded() -> None:
    tiers = [friendship_tier(level) for level in range(-5, 120)]
    order = ["new face", "acquaintance", "friend", "good friend", "best friend"]
    ranks = [order.index(t) for t in tiers]
    assert ranks == sorted(ranks)
    assert friendship_tier(-5) == "new face" and friendship_tier(500) == "best friend"


# (the rule that must find it, or None when nothing is stated; text; what is extracted).
CASES: list[tuple[str | None, str, list[Preference]]] = [
    ("name", "hi, call me Sam", [Preference("name", "Sam")]),
    ("name", "call me sam please", [Preference("name", "Sam")]),
    ("name", "My name is Ada Lovelace.", [Preference("name", "Ada Lovelace")]),
    ("introduction", "I'm Sam", [Preference("name", "Sam")]),
    ("introduction", "I am Sam", [Preference("name", "Sam")]),
    ("introduction", "Hi! I\u2019m Ada Lovelace.", [Preference("name", "Ada Lovelace")]),
    ("favourite", "my favourite food is pizza", [Preference("favourite food", "pizza")]),
    ("favourite", "My favorite color is deep blue!", [Preference("favourite color", "deep blue")]),
    ("dislike", "I don't like rain", [Preference("dislikes", "rain")]),
    (
        "dislike",
        "I really hate mornings and Mondays",
        [Preference("dislikes", "mornings"), Preference("dislikes", "Mondays")],
    ),
    ("like", "I love jazz and hiking", [Preference("likes", "jazz"), Preference("likes", "hiking")]),
    ("like", "I love jazz, do you?", [Preference("likes", "jazz")]),
    (
        "like",
        "I love jazz and I hate mornings.",
        [Preference("likes", "jazz"), Preference("dislikes", "mornings")],
    ),
    (None, "Do you think I like pizza?", []),
    (None, "Would I enjoy horror movies?", []),
    (None, "so would I enjoy horror movies", []),
    (None, "If I like it, I buy it.", []),
    (None, "I love pizza?", []),
    (None, "call me maybe", []),
    (None, "call me later, ok?", []),
    (None, "don't call me Sam", []),
    (None, "I hate that my sister lives so far away", []),
    (None, "I hate when it rains", []),
    (None, "I'm tired", []),
    (None, "I'm going home", []),
    (None, "i am sam", []),  # lower case: as likely "i am done" as a name
    (None, "my name is not important", []),
    (None, "I like it", []),
    (None, "I like to swim", []),
    (None, "how are you?", []),
    (None, "", []),
]


@pytest.mark.parametrize(("rule", "text", "expected"), CASES, ids=[text or "(empty)" for _, text, _ in CASES])
def test_each_rule_finds_what_is_stated_and_nothing_else(
    rule: str | None, text: str, expected: list[Preference]
) -> None:
    assert extract_preferences(text) == expected
    if rule is not None:  # the named row of RULES alone finds the statements of its own key
        [row] = [r for r in RULES if r.name == rule]
        alone = [p for clause in clauses(text) for _, prefs in row.find(clause) for p in prefs]
        assert alone and alone == [p for p in expected if p.key == alone[0].key]


def test_every_rule_has_a_case() -> None:
    assert {rule for rule, _, _ in CASES if rule} == {row.name for row in RULES}


def test_liking_moves_a_thing_out_of_the_dislikes() -> None:
    current = {"likes": "jazz", "dislikes": "rain"}
    changes = preference_changes(current, extract_preferences("I love rain"))
    assert changes == {"likes": "jazz, rain", "dislikes": None}
    assert preference_changes({"likes": "jazz"}, extract_preferences("I love jazz")) == {}


@given(st.text(max_size=400))
def test_extraction_never_fails_and_stays_within_the_library_limits(text: str) -> None:
    for pref in extract_preferences(text):
        assert 0 < len(pref.key) <= 64
        assert 0 < len(pref.value) <= MAX_VALUE_LENGTH
    for key, value in preference_changes({}, extract_preferences(text)).items():
        assert value is None or len(value) <= 500
        assert key
