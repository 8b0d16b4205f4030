"""The shared client: chunking, failover, retries with Retry-After, and giving up cleanly."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from reward_service.app import create_app
from shared import (
    AsyncRewardClient,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    RewardRequestError,
    RewardServiceUnavailable,
)
from tests.conftest import service_settings
from tests.live_server import LiveServer, free_port, serving

FAST_RETRY = RetryPolicy(max_attempts=4, max_total_s=10, initial_backoff_s=0.01, max_backoff_s=0.05)


def scripted_server(answers: list[tuple[int, dict, dict]]) -> tuple[Starlette, list[dict]]:
    """A server that plays `answers` (status, body, headers) in turn, then repeats the last one."""
    calls: list[dict] = []

    async def score(request: Request) -> JSONResponse:
        calls.append(await request.json())
        status, body, headers = answers[min(len(calls) - 1, len(answers) - 1)]
        return JSONResponse(body, status_code=status, headers=headers)

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), calls


OK_BODY = {"scorer": "fake", "model": "fake", "scores": [1.0, 2.0], "truncated": 0}


def test_long_lists_are_chunked_to_the_server_limit_and_kept_in_order(live_service: LiveServer) -> None:
    texts = [f"text number {i} I like you." if i % 3 else f"{i} I hate you." for i in range(150)]
    with RewardClient(live_service.url) as client:
        whole = client.score(texts).scores
        one_by_one = [client.score([t]).scores[0] for t in texts[:10]]
    assert len(whole) == 150
    assert whole[:10] == pytest.approx(one_by_one, abs=1e-4)


def test_async_client_matches_sync_client(live_service: LiveServer) -> None:
    queries = ["Q: hi. A:"] * 70
    responses = [f" answer {i}" for i in range(70)]

    async def run() -> list[float]:
        async with AsyncRewardClient(live_service.url) as client:
            return (await client.score(queries=queries, responses=responses)).scores

    with RewardClient(live_service.url) as client:
        expected = client.score(queries=queries, responses=responses).scores
    assert asyncio.run(run()) == pytest.approx(expected, abs=1e-5)


def test_fails_over_from_a_dead_server_to_a_live_one(live_service: LiveServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with RewardClient([dead, live_service.url], retry=FAST_RETRY) as client:
        for _ in range(3):
            assert len(client.score(["I like you.", "hello"]).scores) == 2


def test_waits_for_a_server_that_comes_up_later(tiny_roberta: Path) -> None:
    port = free_port()
    app = create_app(service_settings(tiny_roberta))
    server = LiveServer(app, port)
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        retry = RetryPolicy(max_attempts=50, max_total_s=60, initial_backoff_s=0.1, max_backoff_s=0.5)
        with RewardClient(f"http://127.0.0.1:{port}", retry=retry, max_items_per_request=8) as client:
            # Connection refused first, then 503 while the model loads, then scores.
            assert len(client.score(["I like you."]).scores) == 1
    finally:
        starter.join()
        server.stop()


def test_honours_retry_after_on_503_then_succeeds() -> None:
    app, calls = scripted_server([(503, {"detail": "queue full"}, {"Retry-After": "1"}), (200, OK_BODY, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        started = time.monotonic()
        assert client.score(["a", "b"]).scores == [1.0, 2.0]
        assert time.monotonic() - started >= 0.9
    assert len(calls) == 2


def test_gives_up_with_a_clear_error_and_no_scores() -> None:
    app, calls = scripted_server([(502, {"detail": "judge failed on 2 of 2 texts"}, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardServiceUnavailable) as error:
            client.score(["a", "b"])
    assert error.value.attempts == 4 and len(calls) == 4
    assert "judge failed on 2 of 2 texts" in str(error.value)


def test_client_errors_are_not_retried() -> None:
    app, calls = scripted_server([(422, {"detail": "texts[0] is too long"}, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardRequestError) as error:
            client.score(["a"])
    assert error.value.status_code == 422 and len(calls) == 1


def test_a_wrong_number_of_scores_is_an_error_not_a_result() -> None:
    app, _ = scripted_server([(200, OK_BODY, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardClientError, match="2 scores for 3 inputs"):
            client.score(["a", "b", "c"])


def test_unreachable_everywhere_raises_after_bounded_attempts() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with RewardClient(urls, retry=FAST_RETRY, max_items_per_request=8) as client:
        with pytest.raises(RewardServiceUnavailable) as error:
            client.score(["a"])
    assert error.value.attempts == 4 and "ConnectError" in str(error.value)


def test_api_key_comes_from_argument_or_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_roberta: Path
) -> None:
    with serving(create_app(service_settings(tiny_roberta, api_key="k1"))) as server:
        with RewardClient(server.url, api_key="k1") as client:
            assert len(client.score(["a"]).scores) == 1
        monkeypatch.setenv("REWARD_API_KEY", "k1")
        with RewardClient(server.url) as client:
            assert len(client.score(["a"]).scores) == 1
        monkeypatch.setenv("REWARD_API_KEY", "wrong")
        with RewardClient(server.url) as client, pytest.raises(RewardRequestError) as error:
            client.score(["a"])
        assert error.value.status_code == 401


@pytest.mark.parametrize("bad", ["", "localhost:8000", ["http://ok", "ftp://x"]])
def test_bad_base_urls_are_rejected(bad: str | list[str]) -> None:
    with pytest.raises(ValueError):
        RewardClient(bad)
