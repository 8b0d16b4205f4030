"""The reward service's settings as the tests and benchmarks build them, offline and isolated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from reward_service.settings import ServiceSettings

if TYPE_CHECKING:
    import pytest

    from harness.fake_bedrock import FakeBedrock

LONG_TEXT = "Thank you for your help, it was kind of you. " * 60  # past the 512-token window


def service_settings(model: Path, **overrides: object) -> ServiceSettings:
    """The RoBERTa scorer on `model`, on the CPU."""
    # _env_file=None: a developer's .env must not leak into tests.
    values: dict[str, object] = {"roberta_model": str(model), "device": "cpu", **overrides}
    return ServiceSettings(_env_file=None, **values)


def shared_service_settings(model: Path) -> ServiceSettings:
    """A service that tests share across a module or the session: room for a trainer's batches
    (64 items of up to 5,000 characters) and a queue no test fills."""
    return service_settings(model, max_items_per_request=64, max_text_chars=5000, queue_capacity=4096)


def bedrock_settings(fake: FakeBedrock, **overrides: object) -> ServiceSettings:
    """Settings for the Bedrock judge alone against the fake, with short retry budgets."""
    values: dict[str, object] = {
        "scorers": ["claude-bedrock"],
        "bedrock_endpoint_url": fake.url,
        "bedrock_max_attempts": 2,
        "bedrock_retry_total_s": 1.0,
    }
    values.update(overrides)
    return ServiceSettings(_env_file=None, **values)


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS configuration from the developer's machine: no variables, files or instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
