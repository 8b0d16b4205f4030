"""An outage is ridden out for the whole --reward_max_wait_s (no attempt cap cuts it short), and
the console says the trainer is waiting."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

from harness.live_server import LiveServer, free_port  # noqa: E402
from harness.service import service_settings  # noqa: E402
from reward_service.app import create_app  # noqa: E402
from shared.client import RewardClient  # noqa: E402
from shared.errors import RewardServiceUnavailable  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.train import reward_retry  # noqa: E402


def _fast_retry(url: str, wait_s: float):
    """The trainer's policy for --reward_max_wait_s, with short back-offs: a test sees many attempts."""
    policy = reward_retry(RLAIFArguments(reward_url=url, reward_max_wait_s=wait_s))
    policy.initial_backoff_s, policy.max_backoff_s = 0.02, 0.1
    policy.report_after_s, policy.report_every_s = 0.5, 0.5
    return policy


def test_refused_connections_are_retried_for_the_whole_budget_with_a_console_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), RewardClient(url, retry=_fast_retry(url, 2.0)) as client:
        with pytest.raises(RewardServiceUnavailable) as caught:
            client.scorers()
    elapsed = time.monotonic() - started
    # The old cap (8 attempts) ended the wait long before the budget; now the budget ends it.
    assert caught.value.attempts > 8 and 1.7 <= elapsed <= 4.0
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.reward"]
    assert lines and all("retrying until 2 s" in line for line in lines)
    assert lines[0].startswith("reward service unreachable for ")
    assert 1 <= len(lines) <= 4  # throttled, not one per attempt


def test_a_service_restart_within_the_budget_does_not_stop_the_call(tiny_roberta: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(create_app(service_settings(tiny_roberta)), port=port)
    threading.Timer(1.5, server.start).start()  # down for 1.5 s, then back (loading takes a while more)
    try:
        with RewardClient(url, retry=_fast_retry(url, 60.0)) as client:
            assert client.score(texts=["thank you"]).scores
    finally:
        server.stop()
