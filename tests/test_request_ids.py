"""X-Request-Id and the timing headers: taken or made, on every answer (errors too), in the request's
log lines; the queue and inference times are the engine's own measurements."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.engine_gate import EngineGate, wait_for_items_sent
from harness.fake_bedrock import FakeBedrock, error_reply
from harness.live_server import LiveServer, serving
from harness.service import LONG_TEXT, bedrock_settings, service_settings
from reward_service.app import create_app
from reward_service.logs import RequestIdFilter

GENERATED = re.compile(r"[0-9a-f]{32}")
ENGINE_TIMES = ("x-tokenization-time", "x-queue-time", "x-inference-time")
HOLD_S = 0.2


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineGate]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield EngineGate(tmp_path_factory.mktemp("gate")).install(monkeypatch)


@pytest.fixture(scope="module")
def slow_service(tiny_roberta: Path, gate: EngineGate) -> Iterator[LiveServer]:
    """A service whose engine the tests can hold busy (`gate`); open, it is the tiny model's."""
    app = create_app(service_settings(tiny_roberta, max_items_per_request=64))
    with serving(app) as server:
        yield server


def score(server: LiveServer, texts: list[str], **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/score", json={"texts": texts}, headers=headers, timeout=60)


def ms(response: httpx.Response, header: str) -> int:
    return int(response.headers[header])


def test_the_clients_id_comes_back_and_an_unsafe_one_is_replaced(slow_service: LiveServer) -> None:
    for given in ("trace-42", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a" * 128):
        assert score(slow_service, ["hi"], **{"X-Request-Id": given}).headers["x-request-id"] == given
    made = {score(slow_service, ["hi"]).headers["x-request-id"] for _ in range(2)}
    assert len(made) == 2 and all(GENERATED.fullmatch(i) for i in made)
    for unsafe in ("two words", "a" * 129, "x;forged=1", "caf\xe9"):
        headers = {"X-Request-Id": unsafe.encode("latin-1")}
        answer = httpx.get(slow_service.url + "/healthz", headers=headers)
        assert GENERATED.fullmatch(answer.headers["x-request-id"]), unsafe


def test_a_scored_answer_says_where_its_time_went(slow_service: LiveServer) -> None:
    answer = score(slow_service, ["I like you.", "You are terrible."])
    assert answer.status_code == 200
    total = ms(answer, "x-total-time")
    assert ms(answer, "x-compute-time") == total  # as TEI: the request's whole time in the server
    # Tokenizing and the engine's time are parts of the front end's time, never more.
    assert sum(ms(answer, header) for header in ENGINE_TIMES) <= total
    probe = httpx.get(slow_service.url + "/healthz")
    assert "x-total-time" in probe.headers and not set(ENGINE_TIMES) & set(probe.headers)


def test_queue_time_is_the_wait_behind_other_work_and_inference_the_model_time(
    slow_service: LiveServer, gate: EngineGate
) -> None:
    # The engine is held inside a batch of 16 long texts for at least HOLD_S; a small request sent
    # meanwhile waits in the engine's queue for that batch to finish.
    scorer = slow_service.app.state.registry.get(None)  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=2) as pool:
        gate.close()
        try:
            big = pool.submit(score, slow_service, [LONG_TEXT] * 16)
            gate.wait_held(1)
            small = pool.submit(score, slow_service, ["I like you."])
            wait_for_items_sent(scorer, 17)
            time.sleep(HOLD_S)  # the least time both spend: the big one in its batch, the small one queued
        finally:
            gate.open()
        big_answer, small_answer = big.result(), small.result()
    assert big_answer.status_code == small_answer.status_code == 200
    assert ms(big_answer, "x-inference-time") >= HOLD_S * 1000
    assert ms(small_answer, "x-queue-time") >= HOLD_S * 1000
    assert ms(small_answer, "x-queue-time") + ms(small_answer, "x-inference-time") <= ms(
        small_answer, "x-total-time"
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/scorers", None, {}, 401),
        ("POST", "/score", b"x" * 2048, {"Authorization": "Bearer k3y"}, 413),
        ("POST", "/score", b'{"texts": "not a list"}', {"Authorization": "Bearer k3y"}, 422),
        ("POST", "/score/nope", b'{"texts": ["a"]}', {"Authorization": "Bearer k3y"}, 404),
        ("GET", "/boom", None, {"Authorization": "Bearer k3y"}, 500),
        ("GET", "/healthz", None, {}, 200),
    ],
)
def test_every_answer_carries_the_id_and_total_time_errors_included(
    method: str, path: str, body: bytes | None, headers: dict[str, str], status: int
) -> None:
    # The app is called in-process without starting its scorers: these answers need none.
    app = create_app(service_settings(Path("unused-model"), api_key="k3y", max_body_bytes=1024))

    async def boom() -> None:
        raise RuntimeError("a bug")  # answered by Starlette's outermost error layer

    app.add_api_route("/boom", boom)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            content_type = {"content-type": "application/json"} if body else {}
            return await client.request(
                method, path, content=body, headers={**headers, **content_type, "X-Request-Id": "req-7"}
            )

    answer = asyncio.run(call())
    assert answer.status_code == status
    assert answer.headers["x-request-id"] == "req-7"
    assert int(answer.headers["x-total-time"]) >= 0


def test_a_log_line_written_while_serving_a_request_carries_its_id(
    fake_bedrock: FakeBedrock, caplog: pytest.LogCaptureFixture
) -> None:
    fake_bedrock.handler = lambda text, request: error_reply(400, "ValidationException", "bad input")
    caplog.handler.addFilter(RequestIdFilter())
    with serving(create_app(bedrock_settings(fake_bedrock))) as server:
        with caplog.at_level(logging.WARNING, logger="reward_service"):
            answer = score(server, ["a"], **{"X-Request-Id": "judge-1"})
    assert answer.status_code == 424
    [line] = [r for r in caplog.records if "could not score" in r.getMessage()]
    assert line.request_id == "judge-1"
