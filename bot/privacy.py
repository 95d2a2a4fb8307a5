"""Privacy scopes on the bot's side: where a message was said, and what may be used there.

The library knows scopes only as opaque strings; this module gives them their Discord meaning.
A DM is ``dm`` (the person's own private space: a DM reply may use everything of theirs); a
guild is ``guild:<id>`` (a reply there uses only that guild's memories, plus the person's other
guilds' when they opted in with ``/memory share on`` and neither guild is in
``bot.no_cross_guild``). DM memories never appear in a guild.

The person's switches live in their preferences under reserved keys (``privacy.*``), so they
are versioned, exported and forgotten with the rest; they are never shown as preferences. A
preference learned in a DM is listed in ``privacy.dm`` and left out of guild replies: a name or
a like told in private is not repeated in public.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from memory import PRIVATE_SCOPE, Exchange, MemorySystem, UserContext

# A DM is the library's private scope: what was stored before scopes existed counts as said there.
DM_SCOPE: Final = PRIVATE_SCOPE
GUILD_PREFIX: Final = "guild:"
RESERVED_PREFIX: Final = "privacy."
MEMORY_KEY: Final = "privacy.memory"  # "off": nothing of later messages is stored
SHARE_KEY: Final = "privacy.share"  # "on": the person's other guilds' memories may be used
DM_KEY: Final = "privacy.dm"  # the preference keys learned in a DM, comma-separated


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message was said: a guild (None for a DM) and a channel."""

    guild_id: int | None = None
    channel_id: int | None = None

    @property
    def scope(self) -> str:
        return DM_SCOPE if self.guild_id is None else f"{GUILD_PREFIX}{self.guild_id}"

    def metadata(self) -> dict[str, Any]:
        """What a stored memory keeps of its place besides the scope."""
        return {} if self.channel_id is None else {"channel_id": str(self.channel_id)}


DM = Place()


def remembering(ctx: UserContext) -> bool:
    return ctx.preferences.get(MEMORY_KEY) != "off"


def sharing(ctx: UserContext) -> bool:
    return ctx.preferences.get(SHARE_KEY) == "on"


def public_preferences(preferences: Mapping[str, Any], place: Place | None = None) -> dict[str, Any]:
    """The preferences to use or show at ``place`` (None: in private): never the reserved
    switches, and in a guild none learned in a DM."""
    hidden = _dm_keys(preferences) if place is not None and place.guild_id is not None else set()
    return {k: v for k, v in preferences.items() if not k.startswith(RESERVED_PREFIX) and k not in hidden}


def _dm_keys(preferences: Mapping[str, Any]) -> set[str]:
    listed = preferences.get(DM_KEY)
    return set(listed.split(",")) - {""} if isinstance(listed, str) else set()


def with_origin(
    changes: Mapping[str, str | None], place: Place, current: Mapping[str, Any]
) -> dict[str, str | None]:
    """``changes`` plus the DM list: a key a DM teaches joins it, a removed key leaves it.

    A key taught in a DM stays private even if a guild later adds to it (a list of likes is
    one value): hiding too much beats showing a private item in public.
    """
    keys = _dm_keys(current)
    for key, value in changes.items():
        if value is None:
            keys.discard(key)
        elif place.guild_id is None:
            keys.add(key)
    listed = ",".join(sorted(keys)) or None
    out = dict(changes)
    if listed != current.get(DM_KEY):
        out[DM_KEY] = listed
    return out


def needs_dm_key(place: Place, current: Mapping[str, Any]) -> bool:
    """Whether learning in this place may add the ``privacy.dm`` key (room must be kept for it)."""
    return place.guild_id is None and DM_KEY not in current


async def visible_scopes(
    memory: MemorySystem, user_id: str | int, place: Place, closed_guilds: Iterable[str] = ()
) -> frozenset[str] | None:
    """The scopes a reply (or anything shown) at ``place`` may use; None is all of them (a DM)."""
    if place.guild_id is None:
        return None
    own = frozenset({place.scope})
    closed = {str(g) for g in closed_guilds}
    if str(place.guild_id) in closed or not sharing(await memory.get_user_context(user_id)):
        return own
    others = {
        scope
        for scope in await memory.memory_scopes(user_id)
        if scope.startswith(GUILD_PREFIX) and scope.removeprefix(GUILD_PREFIX) not in closed
    }
    return own | others


def visible_exchanges(recent: Iterable[Exchange], scopes: frozenset[str] | None) -> tuple[Exchange, ...]:
    """The recent exchanges said in ``scopes`` (all for None)."""
    return tuple(e for e in recent if scopes is None or e.visible_scope in scopes)


def describe_scope(scope: str) -> str:
    """A scope for people: "DM" or "server 1234"."""
    if scope == DM_SCOPE:
        return "DM"
    if scope.startswith(GUILD_PREFIX):
        return f"server {scope.removeprefix(GUILD_PREFIX)}"
    return scope
