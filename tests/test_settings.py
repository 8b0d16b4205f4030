"""Configuration from REWARD_* variables: the names are part of the public interface."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from reward_service.scorers import SCORER_FACTORIES
from reward_service.settings import DEFAULT_ROBERTA_MODEL, SCORER_BACKENDS, ServiceSettings


def test_defaults_match_the_documented_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServiceSettings(_env_file=None)
    assert settings.scorers == ["roberta-hate"] and settings.default_scorer == "roberta-hate"
    assert (
        settings.roberta_model == DEFAULT_ROBERTA_MODEL == "facebook/roberta-hate-speech-dynabench-r4-target"
    )
    assert settings.device == "auto" and settings.api_key is None
    assert settings.max_items_per_request == 1024 and settings.max_text_chars == 20_000


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARD_SCORERS", " roberta-hate , claude-bedrock ")
    monkeypatch.setenv("REWARD_ROBERTA_MODEL", "/models/roberta")
    monkeypatch.setenv("REWARD_DEVICE", "cuda:1")
    monkeypatch.setenv("REWARD_API_KEY", "abc")
    monkeypatch.setenv("REWARD_MAX_ITEMS_PER_REQUEST", "10")
    monkeypatch.setenv("REWARD_MAX_TEXT_CHARS", "99")
    settings = ServiceSettings(_env_file=None)
    assert settings.scorers == ["roberta-hate", "claude-bedrock"]
    assert settings.roberta_model == "/models/roberta" and settings.device == "cuda:1"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "abc"
    assert "abc" not in repr(settings)  # a secret never shows in logs of the settings
    assert settings.max_items_per_request == 10 and settings.max_text_chars == 99


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_api_key_means_no_authentication(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blank: str
) -> None:
    # .env.example: "Empty: no authentication", whether `REWARD_API_KEY=` in .env or in the environment.
    (tmp_path / ".env").write_text(f"REWARD_API_KEY={blank}\n")
    monkeypatch.delenv("REWARD_API_KEY", raising=False)
    assert ServiceSettings(_env_file=tmp_path / ".env").api_key is None
    monkeypatch.setenv("REWARD_API_KEY", blank)
    assert ServiceSettings(_env_file=None).api_key is None
    assert ServiceSettings(_env_file=None, api_key=blank).api_key is None


def test_an_empty_variable_leaves_its_setting_at_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # `REWARD_X=` as .env.example shows unset settings; the internal one once crashed the service.
    for name in ("REWARD_ENGINE_ADDRESSES", "REWARD_MAX_BATCH_PADDING_TOKENS", "REWARD_SCORERS"):
        monkeypatch.setenv(name, "")
    settings = ServiceSettings(_env_file=None)
    assert settings.engine_addresses == {} and settings.max_batch_padding_tokens is None
    assert settings.scorers == ["roberta-hate"]


@pytest.mark.parametrize(
    "env",
    [
        {"REWARD_SCORERS": " , "},
        {"REWARD_SCORERS": "roberta-hate,roberta-hate"},
        {"REWARD_MAX_ITEMS_PER_REQUEST": "0"},
        {"REWARD_QUEUE_CAPACITY": "10", "REWARD_MAX_ITEMS_PER_REQUEST": "100"},
        {"REWARD_DTYPE": "float8"},
        {"REWARD_ENGINE_HEARTBEAT_INTERVAL_S": "2", "REWARD_ENGINE_HEARTBEAT_TIMEOUT_S": "1"},
    ],
)
def test_bad_settings_fail_at_start(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        ServiceSettings(_env_file=None)


def test_unknown_scorer_name_fails_at_start_listing_the_available_ones() -> None:
    with pytest.raises(ValidationError, match="gpt-judge.*available: roberta-hate"):
        ServiceSettings(_env_file=None, scorers="roberta-hate,gpt-judge")


def test_the_names_the_settings_accept_are_the_backends_the_registry_builds() -> None:
    assert set(SCORER_BACKENDS) == set(SCORER_FACTORIES)
