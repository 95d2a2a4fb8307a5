"""Logging set up from the [logging] settings: level, file, text or JSON lines; secrets masked.

Every line passes through :func:`bot.redact.redact` with the process's secrets (the Discord
token, the LLM API key), so no library's error message can write them to the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bot.redact import redact
from memory import ConfigError, Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A text formatter whose output never contains one of ``secrets``."""

    def __init__(self, secrets: Sequence[str], fmt: str | None = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        self._secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


class JsonLinesFormatter(RedactingFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exception."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__(secrets, None)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(entry).decode(), self._secrets)


def configure_logging(config: Settings, *, verbose: bool = False, secrets: Sequence[str] = ()) -> None:
    """Install one handler on the root logger (stderr or ``logging.file``)."""
    settings = config.logging
    handler: logging.Handler
    if settings.file:
        path = Path(settings.file)
        try:
            # WatchedFileHandler reopens the file after logrotate moved it.
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"setting logging.file = {settings.file!r} is invalid: {exc.strerror or exc}; "
                "choose a writable file, or leave it empty for standard error"
            ) from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLinesFormatter(secrets) if settings.format == "json" else RedactingFormatter(secrets)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(settings.level)
    root.setLevel(min(level, logging.INFO) if verbose else level)
    logging.getLogger("memory.audit").setLevel(logging.INFO)  # erasures are always shown
