"""The shared client: chunking, failover, retries with Retry-After, deadlines, hung servers, one error
hierarchy, and giving up cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.live_server import LiveServer, free_port, serving
from harness.service import service_settings
from reward_service.app import create_app
from shared import (
    AsyncRewardClient,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    RewardRequestError,
    RewardResponseError,
    RewardScoringError,
    RewardServiceUnavailable,
)
from shared.client import TIMEOUT_HEADER, _ServerPool

FAST_RETRY = RetryPolicy(max_attempts=4, max_total_s=10, initial_backoff_s=0.01, max_backoff_s=0.05)


def scripted_server(answers: list[tuple[int, object, dict]]) -> tuple[Starlette, list[dict]]:
    """A server that plays `answers` (status, body, headers) in turn, then repeats the last one.

    A body that is bytes is sent as it is; anything else as JSON. Each call's JSON body is recorded,
    with the timeout header the client sent under "_timeout_ms".
    """
    calls: list[dict] = []

    async def score(request: Request) -> Response:
        calls.append({**await request.json(), "_timeout_ms": request.headers.get(TIMEOUT_HEADER)})
        status, body, headers = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(body, bytes):
            return Response(body, status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), calls


def echo_server() -> tuple[Starlette, list[int]]:
    """Scores each text with its number ("t7" -> 7.0); fails with 422 for a chunk holding "bad"."""
    sizes: list[int] = []

    async def score(request: Request) -> JSONResponse:
        texts = (await request.json())["texts"]
        sizes.append(len(texts))
        if "bad" in texts:
            return JSONResponse({"detail": "texts[1]: bad"}, status_code=422)
        scores = [float(t[1:]) for t in texts]
        return JSONResponse({"scorer": "echo", "model": "echo", "scores": scores, "truncated": 0})

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), sizes


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


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, RewardRequestError),
        (404, RewardRequestError),
        (413, RewardRequestError),
        (422, RewardRequestError),
        (424, RewardScoringError),
        (500, RewardScoringError),
    ],
)
def test_answers_that_a_retry_cannot_change_are_raised_at_once(status: int, error_class: type) -> None:
    app, calls = scripted_server([(status, {"detail": "texts[0] is too long"}, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(error_class) as error:
            client.score(["a"])
    assert error.value.status_code == status and len(calls) == 1
    assert isinstance(error.value, RewardClientError) and "texts[0] is too long" in str(error.value)


@pytest.mark.parametrize(
    "answer",
    [b"<html>proxy error</html>", {"scores": "many"}, {"unexpected": True}],
    ids=["not-json", "wrong-type", "wrong-shape"],
)
def test_an_invalid_200_is_a_response_error_not_a_crash_or_a_result(answer: object) -> None:
    app, calls = scripted_server([(200, answer, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardResponseError) as error:
            client.score(["a"])
    assert isinstance(error.value, RewardClientError) and error.value.url == server.url
    assert len(calls) == 1


# Ids fixed: the date's text changes by the second, and parallel workers must collect the same tests.
@pytest.mark.parametrize(
    "retry_after", ["3600", formatdate(time.time() + 3600, usegmt=True)], ids=["seconds", "http-date"]
)
def test_a_huge_retry_after_is_capped(retry_after: str) -> None:
    app, calls = scripted_server(
        [(503, {"detail": "busy"}, {"Retry-After": retry_after}), (200, OK_BODY, {})]
    )
    policy = RetryPolicy(max_attempts=3, max_total_s=30, initial_backoff_s=0.01, max_retry_after_s=0.3)
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=policy, max_items_per_request=8) as client,
    ):
        started = time.monotonic()
        assert client.score(["a", "b"]).scores == [1.0, 2.0]
        assert time.monotonic() - started < 10
    assert len(calls) == 2


def test_each_attempt_tells_the_server_how_long_the_client_will_wait() -> None:
    app, calls = scripted_server([(200, OK_BODY, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, timeout_s=7, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        client.score(["a", "b"])
    assert 6_000 < int(calls[0]["_timeout_ms"]) <= 7_000
    # The call's deadline (FAST_RETRY: 10 s in all) bounds an attempt too.
    with serving(app, ready_path=None) as server:
        with RewardClient(server.url, timeout_s=60, retry=FAST_RETRY, max_items_per_request=8) as client:
            client.score(["a", "b"])
    assert 9_000 < int(calls[1]["_timeout_ms"]) <= 10_000


def test_a_wrong_number_of_scores_is_an_error_not_a_result() -> None:
    app, _ = scripted_server([(200, OK_BODY, {})])
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardResponseError, match="2 scores for 3 inputs"):
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


def test_async_client_retries_fails_over_and_gives_up() -> None:
    flaky, flaky_calls = scripted_server(
        [(503, {"detail": "busy"}, {"Retry-After": "0"}), (200, OK_BODY, {})]
    )
    broken, broken_calls = scripted_server([(502, {"detail": "judge failed"}, {})])
    dead = f"http://127.0.0.1:{free_port()}"

    async def score(urls: list[str]) -> list[float]:
        async with AsyncRewardClient(urls, retry=FAST_RETRY, max_items_per_request=8) as client:
            return (await client.score(["a", "b"])).scores

    with serving(flaky, ready_path=None) as ok_server, serving(broken, ready_path=None) as bad_server:
        assert asyncio.run(score([ok_server.url])) == [1.0, 2.0]
        assert len(flaky_calls) == 2
        assert asyncio.run(score([dead, ok_server.url])) == [1.0, 2.0]
        with pytest.raises(RewardServiceUnavailable) as error:
            asyncio.run(score([bad_server.url]))
    assert error.value.attempts == 4 and len(broken_calls) == 4 and "judge failed" in str(error.value)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_chunks_merge_to_one_score_per_input_in_order_and_a_failing_later_chunk_fails_the_call(
    asynchronous: bool,
) -> None:
    app, sizes = echo_server()
    texts = [f"t{i}" for i in range(11)]

    def score(url: str, inputs: list[str]) -> list[float]:
        if asynchronous:

            async def run() -> list[float]:
                async with AsyncRewardClient(url, retry=FAST_RETRY, max_items_per_request=3) as client:
                    return (await client.score(inputs)).scores

            return asyncio.run(run())
        with RewardClient(url, retry=FAST_RETRY, max_items_per_request=3) as client:
            return client.score(inputs).scores

    with serving(app, ready_path=None) as server:
        assert score(server.url, texts) == [float(i) for i in range(11)]
        assert sorted(sizes) == [2, 3, 3, 3]
        with pytest.raises(RewardRequestError, match="texts\\[1\\]: bad"):
            score(server.url, texts[:7] + ["bad"] + texts[7:])


def test_a_hung_server_is_skipped_after_one_timeout_and_its_skip_grows() -> None:
    """A replica that accepts connections but never answers (SIGSTOPped) costs one attempt timeout."""
    port = free_port()
    hung = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app, calls = scripted_server([(200, OK_BODY, {})])
    try:
        wait_until_listening(port)
        hung.send_signal(signal.SIGSTOP)
        with (
            serving(app, ready_path=None) as live,
            RewardClient(
                [f"http://127.0.0.1:{port}", live.url], timeout_s=1, retry=FAST_RETRY, max_items_per_request=8
            ) as client,
        ):
            started = time.monotonic()
            for _ in range(10):
                assert client.score(["a", "b"]).scores == [1.0, 2.0]
            # One 1 s timeout on the hung replica, then every call goes to the live one.
            assert time.monotonic() - started < 4
        assert len(calls) == 10
    finally:
        hung.kill()
        hung.wait()


def test_a_server_that_keeps_failing_is_skipped_longer_each_time() -> None:
    pool = _ServerPool(["http://a", "http://b"], max_down_s=40)
    skips = []
    for _ in range(4):
        before = time.monotonic()
        pool.mark_down("http://a", cooldown_s=10)
        skips.append(pool._down_until["http://a"] - before)
    assert skips == pytest.approx([10, 20, 40, 40], abs=0.5)
    assert [pool.next_url() for _ in range(3)] == ["http://b"] * 3
    pool.mark_up("http://a")
    pool.mark_down("http://a", cooldown_s=10)
    assert pool._down_until["http://a"] - time.monotonic() == pytest.approx(10, abs=0.5)


def wait_until_listening(port: int, timeout_s: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")
