from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_bedrock import FakeBedrock, running_fake_bedrock
from harness.live_server import LiveServer, serving
from harness.service import isolate_aws, shared_service_settings
from harness.tiny_stand_ins import tiny_roberta_classifier
from reward_service.app import create_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first: those with end-to-end runs (`slow`), then by their number of tests.

    `make test` hands whole modules to two workers in this order (`--dist loadfile
    --no-loadscope-reorder`); pytest-xdist's own order (by number of tests alone) started the
    trainer modules, a few tests of 15-60 s each, last, so one worker ran them while the other
    had nothing left. Tests keep their order within a module."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def longest_first(tests: list[pytest.Item]) -> tuple[bool, int]:
        return (not any(test.get_closest_marker("slow") for test in tests), -len(tests))

    items[:] = [item for tests in sorted(modules.values(), key=longest_first) for item in tests]


@pytest.fixture(scope="session", autouse=True)
def _no_standby_engines() -> Iterator[None]:
    """No standby engine in the services the suite starts (dozens, each would import PyTorch once
    more for a restart that most never have); the standby's own tests turn it on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REWARD_ENGINE_STANDBY", "false")
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_worker() -> Iterator[None]:
    """Under pytest-xdist (`make test` runs two workers), torch in each worker and in the processes it starts
    uses one thread: with torch's default of one per core, two workers' threads and their engines'
    spun on each other's cores (41 CPU-minutes for the suite against 13 in one process)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_roberta() -> Path:
    """A tiny RoBERTa hate classifier (real architecture and labels), briefly trained; shared, so
    read-only."""
    return tiny_roberta_classifier(train_steps=150)


@pytest.fixture(scope="session")
def slow_roberta() -> Path:
    """A wider, deeper RoBERTa (random weights, same tokenizer and labels), for the tests that need
    real model time to measure (the admission rate); tests that only need a busy engine hold
    `harness.engine_gate` instead."""
    return tiny_roberta_classifier(
        train_steps=0,
        layers=8,
        hidden=256,
        heads=4,
        intermediate=1024,
    )


@pytest.fixture(scope="session")
def live_service(tiny_roberta: Path) -> Iterator[LiveServer]:
    """The reward service on a loopback port with the tiny model and small limits, one for the whole
    run: tests that use it must not change its state beyond counting (tests that stop, kill or
    overload a service start their own)."""
    settings = shared_service_settings(tiny_roberta)
    # A generous start-up budget: a failure here is every later user's error (pytest keeps it).
    with serving(create_app(settings), timeout_s=300) as server:
        yield server


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
