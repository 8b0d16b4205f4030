"""Bedrock throttling 30% of calls: every text still scored through the service, retries bounded."""

from __future__ import annotations

import random
import threading

import httpx

from harness.fake_bedrock import FakeBedrock, Reply, article_judge, error_reply
from harness.live_server import serving
from harness.service import bedrock_settings
from reward_service.app import create_app


def throttle_share(share: float, seed: int = 0):
    rng = random.Random(seed)
    lock = threading.Lock()
    counts = {"throttled": 0, "answered": 0}

    def handler(text: str, request: dict[str, object]) -> Reply:
        with lock:
            throttled = rng.random() < share
            counts["throttled" if throttled else "answered"] += 1
        if throttled:
            return error_reply(429, "ThrottlingException", "Too many requests, please wait")
        return article_judge(text, request)

    return handler, counts


def test_thirty_percent_throttling_still_scores_every_text(fake_bedrock: FakeBedrock) -> None:
    handler, counts = throttle_share(0.3)
    fake_bedrock.handler = handler
    texts = [f"Message {i}: I like you." if i % 2 else f"Message {i}: I hate you." for i in range(40)]
    settings = bedrock_settings(
        fake_bedrock, bedrock_max_attempts=8, bedrock_retry_total_s=30, bedrock_max_concurrency=16
    )
    with serving(create_app(settings)) as server:
        response = httpx.post(server.url + "/score", json={"texts": texts}, timeout=120)
        metrics = httpx.get(server.url + "/metrics").text
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == [5.0 if i % 2 else -4.0 for i in range(40)]
    assert counts["throttled"] > 0.15 * len(texts)  # the fault was really injected
    assert counts["answered"] == len(texts)  # each text answered once: no score was invented
    # Bounded: on average well under one extra call per text at a 30% fault rate.
    assert len(fake_bedrock.calls) == counts["throttled"] + counts["answered"] < 2 * len(texts)
    print(f"texts=40 calls={len(fake_bedrock.calls)} throttled={counts['throttled']}")
    assert 'reward_requests_total{route="/score",scorer="claude-bedrock",status="200"} 1.0' in metrics
