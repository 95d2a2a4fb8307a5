"""``--print-config``: the effective settings as TOML, secrets masked.

The output is valid TOML (a file to start from); secrets are never settings, so they appear
only as comments saying whether each is set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson

from bot.redact import redact
from memory import Settings

SECRET_VARIABLES = ("DISCORD_TOKEN", "MEMORY_BOT_LLM_API_KEY", "OPENAI_API_KEY")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return orjson.dumps(redact(str(value))).decode()  # a JSON string is a TOML basic string


def render_config(settings: Settings, environ: Mapping[str, str]) -> str:
    lines = ["# memory-bot: effective settings (defaults, config files, MEMORY_BOT_* variables)"]
    for name in SECRET_VARIABLES:
        state = "set (hidden)" if environ.get(name, "").strip() else "not set"
        lines.append(f"# secret {name}: {state}")
    for section in dataclasses.fields(settings):
        lines += ["", f"[{section.name}]"]
        values = getattr(settings, section.name)
        for item in dataclasses.fields(values):
            lines.append(f"{item.name} = {toml_value(getattr(values, item.name))}")
    return "\n".join(lines) + "\n"
