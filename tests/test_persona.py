"""Friendship tiers and preference extraction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.persona import (
    MAX_VALUE_LENGTH,
    Preference,
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


def test_names_favourites_likes_and_dislikes_are_found() -> None:
    assert extract_preferences("hi, call me Sam") == [Preference("name", "Sam")]
    assert extract_preferences("My name is Ada Lovelace.") == [Preference("name", "Ada Lovelace")]
    assert extract_preferences("call me sam please") == [Preference("name", "Sam")]
    assert extract_preferences("my favourite food is pizza") == [Preference("favourite food", "pizza")]
    assert extract_preferences("My favorite color is deep blue!") == [
        Preference("favourite color", "deep blue")
    ]
    assert extract_preferences("I love jazz and I hate mornings.") == [
        Preference("dislikes", "mornings"),
        Preference("likes", "jazz"),
    ]
    assert extract_preferences("I don't like rain") == [Preference("dislikes", "rain")]


def test_ordinary_sentences_state_no_preference() -> None:
    for text in ("I like it", "how are you?", "my name is not important", "I like to swim", ""):
        assert extract_preferences(text) == []


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
