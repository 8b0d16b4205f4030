from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.tiny_models import build_tiny_roberta_classifier
from reward_service.app import create_app
from reward_service.settings import ServiceSettings
from tests.live_server import LiveServer, serving


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa hate classifier (real architecture and labels), briefly trained."""
    return build_tiny_roberta_classifier(tmp_path_factory.mktemp("tiny-roberta"), train_steps=150)


def service_settings(model: Path, **overrides: object) -> ServiceSettings:
    # _env_file=None: a developer's .env must not leak into tests.
    return ServiceSettings(_env_file=None, roberta_model=str(model), device="cpu", **overrides)


@pytest.fixture(scope="module")
def live_service(tiny_roberta: Path) -> Iterator[LiveServer]:
    """The reward service on a loopback port with the tiny model and small limits."""
    settings = service_settings(
        tiny_roberta, max_items_per_request=64, max_text_chars=5000, queue_capacity=4096
    )
    with serving(create_app(settings)) as server:
        yield server
