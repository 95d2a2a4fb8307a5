from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from memory import ConfigError, Settings, load_settings
from memory.settings import PROJECT_DEFAULTS


def test_default_toml_documents_every_setting_with_the_built_in_value() -> None:
    assert load_settings(environ={}) == Settings()
    text = PROJECT_DEFAULTS.read_text()
    for section in dataclasses.fields(Settings):
        assert f"[{section.name}]" in text
        for field in dataclasses.fields(getattr(Settings(), section.name)):
            assert re.search(rf"^{field.name} = ", text, re.M), f"{section.name}.{field.name} undocumented"


def test_user_file_then_environment_override(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text('[storage]\nsave_interval = 7\n[bot]\nchannels = ["general"]\n')
    settings = load_settings(user, environ={"MEMORY_BOT_STORAGE_SAVE_INTERVAL": "3.5"})
    assert settings.storage.save_interval == 3.5
    assert settings.bot.channels == ("general",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEMORY_BOT_STORAGE_SAVE_INTERVAL": "soon"}, r"storage.save_interval = 'soon'.*number"),
        ({"MEMORY_BOT_STORAGE_SAVE_INTERVAL": "-1"}, r"storage.save_interval.*at least"),
        (
            {"MEMORY_BOT_STORAGE_SYNCHRONOUS": "sometimes"},
            r"storage.synchronous.*FULL, NORMAL, EXTRA",
        ),
        ({"MEMORY_BOT_ENCODER_BACKEND": "tpu"}, r"encoder.backend = 'tpu'"),
        ({"MEMORY_BOT_LIMITS_NOPE": "1"}, r"unknown setting limits.nope"),
        ({"MEMORY_BOT_NOPE": "1"}, r"MEMORY_BOT_NOPE names no setting"),
    ],
)
def test_bad_values_fail_naming_the_setting_and_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_missing_or_broken_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[storage\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})


def test_choices_are_case_insensitive() -> None:
    settings = load_settings(environ={"MEMORY_BOT_STORAGE_SYNCHRONOUS": "normal"})
    assert settings.storage.synchronous == "NORMAL"
