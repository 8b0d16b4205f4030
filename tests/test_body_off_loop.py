"""Large bodies are decoded and validated in a worker thread, and a wrong type inside a huge list is
refused at the first wrong item, in each protocol's error shape; valid bodies of any size are
answered as before."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from fastapi.exceptions import RequestValidationError

from harness.asgi_request import request_with
from harness.live_server import LiveServer
from reward_service.body_decoding import OFF_LOOP_BYTES, decode_body, key_guard
from shared.schemas import ScoreRequest

JSON = {"content-type": "application/json"}


def zeros(megabytes: float) -> bytes:
    return b", ".join([b"0"] * int(megabytes * 1024 * 1024 / 3))


def test_a_wrong_type_in_a_huge_list_is_refused_where_it_is() -> None:
    # The list goes on with text that is not JSON: the refusal came at the first wrong item.
    body = b'{"texts": ["ok", 7, ' + zeros(1) + b", not json at all"
    assert len(body) > OFF_LOOP_BYTES
    with pytest.raises(RequestValidationError) as caught:
        asyncio.run(decode_body(request_with(body), key_guard(ScoreRequest), ScoreRequest))
    assert caught.value.errors() == [
        {
            "type": "string_type",
            "loc": ("body", "texts", 1),
            "msg": "Input should be a valid string",
            "input": None,
        }
    ]


def test_a_large_body_is_validated_as_fastapi_would() -> None:
    texts = ["x" * 1000] * (OFF_LOOP_BYTES // 1000 + 1)
    valid = json.dumps({"texts": texts, "return_labels": True}).encode()
    request = request_with(valid)
    asyncio.run(decode_body(request, key_guard(ScoreRequest), ScoreRequest))
    assert asyncio.run(request.json()) == ScoreRequest(texts=texts, return_labels=True)
    # The model's own checks still run, and their errors are located under "body".
    both = json.dumps({"texts": texts, "queries": ["q"], "responses": ["r"]}).encode()
    with pytest.raises(RequestValidationError) as caught:
        asyncio.run(decode_body(request_with(both), key_guard(ScoreRequest), ScoreRequest))
    (error,) = caught.value.errors()
    assert error["loc"] == ("body",) and "not both" in error["msg"]


@pytest.mark.parametrize(
    ("path", "prefix", "status", "check"),
    [
        ("/score", b'"texts": [', 422, lambda b: b["detail"][0]["loc"] == ["body", "texts", 0]),
        ("/get_reward", b'"query": [', 422, lambda b: b["detail"][0]["type"] == "string_type"),
        (
            "/classify",
            b'"input": [',
            400,
            lambda b: b["error"]["type"] == "BadRequestError" and "input" in b["error"]["message"],
        ),
        (
            "/predict",
            b'"inputs": [',
            422,
            lambda b: b["error_type"] == "Validation" and "inputs" in b["error"],
        ),
    ],
)
def test_a_huge_list_of_numbers_for_texts_gets_the_protocols_validation_error(
    live_service: LiveServer, path: str, prefix: bytes, status: int, check: object
) -> None:
    body = b"{" + prefix + zeros(20) + b"]}"
    response = httpx.post(live_service.url + path, content=body, headers=JSON, timeout=60)
    assert response.status_code == status, response.text
    assert check(response.json()), response.text  # type: ignore[operator]


def test_a_large_valid_body_is_scored_like_a_small_one(live_service: LiveServer) -> None:
    texts = [("I like you. " * 500)[:4900] + str(i) for i in range(64)]
    body = json.dumps({"texts": texts}).encode()
    assert len(body) > OFF_LOOP_BYTES
    large = httpx.post(live_service.url + "/score", content=body, headers=JSON, timeout=60)
    small = httpx.post(live_service.url + "/score", json={"texts": texts[:2]}, timeout=60)
    assert large.status_code == 200 and small.status_code == 200, (large.text, small.text)
    assert large.json()["scores"][:2] == pytest.approx(small.json()["scores"], abs=1e-5)
    assert len(large.json()["scores"]) == 64


def test_a_small_body_with_a_wrong_type_keeps_pydantics_words(live_service: LiveServer) -> None:
    response = httpx.post(live_service.url + "/score", json={"texts": ["a", 3]}, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", "texts", 1], "msg": "Input should be a valid string", "type": "string_type"}
    ]


def test_a_large_rollouts_texts_are_checked_and_stripped_off_the_event_loop(
    live_service: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regex pass over megabytes of rollout text on the loop stalled /healthz for half a second.
    from reward_service.protocols import openrlhf

    threads: list[str] = []
    strip = openrlhf.strip_special_tokens

    def recording_strip(text: str, settings: object) -> str:
        threads.append(threading.current_thread().name)
        return strip(text, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(openrlhf, "strip_special_tokens", recording_strip)
    small = httpx.post(live_service.url + "/get_reward", json={"query": ["<s>I like you.</s>"]}, timeout=60)
    assert small.status_code == 200, small.text
    (loop_thread,) = threads
    queries = [f"<s>text {i} " + "word " * 900 + "</s>" for i in range(60)]
    assert sum(map(len, queries)) > OFF_LOOP_BYTES
    threads.clear()
    large = httpx.post(live_service.url + "/get_reward", json={"query": queries}, timeout=120)
    assert large.status_code == 200, large.text
    assert len(large.json()["rewards"]) == 60
    assert len(threads) == 60 and loop_thread not in threads
