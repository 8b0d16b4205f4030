from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.tiny_models import build_tiny_roberta_classifier
from harness.fake_bedrock import FakeBedrock, running_fake_bedrock
from harness.live_server import LiveServer, serving
from reward_service.app import create_app
from reward_service.settings import ServiceSettings


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa hate classifier (real architecture and labels), briefly trained."""
    return build_tiny_roberta_classifier(tmp_path_factory.mktemp("tiny-roberta"), train_steps=150)


@pytest.fixture(scope="session")
def slow_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider, deeper RoBERTa (random weights, same tokenizer and labels): a batch of 16 texts of 512
    tokens keeps the engine busy for about a second on a 2-core CPU, so tests can queue behind it."""
    return build_tiny_roberta_classifier(
        tmp_path_factory.mktemp("slow-roberta"),
        train_steps=0,
        layers=8,
        hidden=256,
        heads=4,
        intermediate=1024,
    )


LONG_TEXT = "Thank you for your help, it was kind of you. " * 60  # past the 512-token window


def service_settings(model: Path, **overrides: object) -> ServiceSettings:
    # _env_file=None: a developer's .env must not leak into tests.
    values: dict[str, object] = {"roberta_model": str(model), "device": "cpu", **overrides}
    return ServiceSettings(_env_file=None, **values)


@pytest.fixture(scope="module")
def live_service(tiny_roberta: Path) -> Iterator[LiveServer]:
    """The reward service on a loopback port with the tiny model and small limits."""
    settings = service_settings(
        tiny_roberta, max_items_per_request=64, max_text_chars=5000, queue_capacity=4096
    )
    with serving(create_app(settings)) as server:
        yield server


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS configuration from the developer's machine: no variables, files or instance metadata."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def fake_bedrock_server() -> Iterator[FakeBedrock]:
    with running_fake_bedrock() as (fake, _):
        yield fake


@pytest.fixture
def fake_bedrock(
    fake_bedrock_server: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> FakeBedrock:
    """The fake Bedrock, reset, with dummy credentials and a region in the environment."""
    fake_bedrock_server.reset()
    isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return fake_bedrock_server


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
