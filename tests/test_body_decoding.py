"""Bodies are decoded with msgspec: an unknown field is refused before its value is read, in each
protocol's error shape, and the service stays live while such bodies arrive."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.exceptions import RequestValidationError

from harness.asgi_request import request_with
from harness.live_server import LiveServer
from reward_service.body_decoding import decode_body, key_guard
from reward_service.protocols.tei_predict import PredictRequest
from shared.schemas import ScoreRequest

JSON = {"content-type": "application/json"}


def hostile(prefix: bytes, megabytes: float = 5) -> bytes:
    """Valid JSON: `prefix` fields, then an unknown field `x` holding a list of about `megabytes` MB."""
    return b"{" + prefix + b', "x": [' + b"0, " * int(megabytes * 1024 * 1024 / 3) + b"0]}"


def test_unknown_field_is_refused_without_reading_its_value() -> None:
    # What follows the unknown key is not even JSON: the refusal came before reading it.
    request = request_with(b'{"texts": ["a"], "x": [0, 0, not json at all')
    with pytest.raises(RequestValidationError) as caught:
        asyncio.run(decode_body(request, key_guard(ScoreRequest)))
    assert caught.value.errors() == [
        {
            "type": "extra_forbidden",
            "loc": ("body", "x"),
            "msg": "Extra inputs are not permitted",
            "input": None,
        }
    ]


def test_unknown_field_in_a_nested_model_is_named_with_its_path() -> None:
    request = request_with(b'{"inputs": "a", "parameters": {"top_k": 1, "temperature": [1, 2')
    with pytest.raises(RequestValidationError) as caught:
        asyncio.run(decode_body(request, key_guard(PredictRequest)))
    assert caught.value.errors()[0]["loc"] == ("body", "parameters", "temperature")


def test_a_valid_body_is_decoded_for_fastapi_as_json_loads_would() -> None:
    body = b'{"texts": ["caf\\u00e9", "\\ud83d\\ude00 ok"], "return_labels": true, "truncation_side": "left"}'
    request = request_with(body)
    asyncio.run(decode_body(request, key_guard(ScoreRequest)))
    assert asyncio.run(request.json()) == {
        "texts": ["café", "\U0001f600 ok"],
        "return_labels": True,
        "truncation_side": "left",
    }


def test_a_body_that_arrives_in_pieces_is_decoded_whole_and_kept_for_fastapi() -> None:
    # Pieces of 3 bytes cut through the multi-byte characters and the escapes.
    body = '{"texts": ["café ☕", "\\ud83d\\ude00 ok", "x"], "return_labels": true}'.encode()
    request = request_with(body, chunk_bytes=3)
    asyncio.run(decode_body(request, key_guard(ScoreRequest)))
    assert asyncio.run(request.json()) == json.loads(body)
    assert asyncio.run(request.body()) == body  # what FastAPI's own parsing reads


def test_bad_json_in_pieces_is_left_for_fastapi_to_word() -> None:
    body = b'{"texts": ["a", "b"], "return_labels": tru}'
    request = request_with(body, chunk_bytes=5)
    asyncio.run(decode_body(request, key_guard(ScoreRequest)))
    assert asyncio.run(request.body()) == body
    with pytest.raises(json.JSONDecodeError) as caught:  # FastAPI's 422 json_invalid, at this position
        asyncio.run(request.json())
    assert caught.value.pos == body.index(b"tru")


@pytest.mark.parametrize(
    ("path", "prefix", "status", "message"),
    [
        ("/score", b'"texts": ["hello"]', 422, lambda body: body["detail"][0]["loc"] == ["body", "x"]),
        (
            "/score/default",
            b'"texts": ["hello"]',
            422,
            lambda body: body["detail"][0]["type"] == "extra_forbidden",
        ),
        ("/get_reward", b'"query": ["hello"]', 422, lambda body: body["detail"][0]["loc"] == ["body", "x"]),
        (
            "/slime/reward",
            b'"prompt": "a", "response": "b"',
            422,
            lambda body: body["detail"][0]["loc"] == ["body", "x"],
        ),
        (
            "/classify",
            b'"input": "hello"',
            400,
            lambda body: (
                body["error"]["message"] == "x: Extra inputs are not permitted"
                and body["error"]["type"] == "BadRequestError"
            ),
        ),
        (
            "/predict",
            b'"inputs": "hello"',
            422,
            lambda body: body == {"error": "x: Extra inputs are not permitted", "error_type": "Validation"},
        ),
        ("/", b'"inputs": "hello"', 422, lambda body: body["error"] == "x: Extra inputs are not permitted"),
    ],
)
def test_big_unknown_field_body_is_refused_in_the_protocols_shape(
    live_service: LiveServer, path: str, prefix: bytes, status: int, message: object
) -> None:
    response = httpx.post(live_service.url + path, content=hostile(prefix), headers=JSON, timeout=60)
    assert response.status_code == status, response.text
    assert message(response.json()), response.text  # type: ignore[operator]


def test_service_stays_live_while_big_unknown_field_bodies_arrive(live_service: LiveServer) -> None:
    def attack(_: int) -> int:
        return httpx.post(
            live_service.url + "/score", content=hostile(b'"texts": ["a"]'), headers=JSON, timeout=60
        ).status_code

    with ThreadPoolExecutor(4) as pool:
        attacks = [pool.submit(attack, i) for i in range(8)]
        probes = [httpx.get(live_service.url + "/healthz", timeout=60).status_code for _ in range(20)]
        scored = httpx.post(live_service.url + "/score", json={"texts": ["I like you."]}, timeout=60)
        assert [future.result() for future in attacks] == [422] * 8
    assert probes == [200] * 20
    assert scored.status_code == 200 and len(scored.json()["scores"]) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # json.loads takes these (inf, nan, a lone surrogate); msgspec does not, so FastAPI parses them.
        (b'{"texts": ["a"], "score_on": 1e999}', "score_on"),
        (b'{"texts": ["a"], "return_labels": NaN}', "return_labels"),
        (b'{"texts": ["ok", "\\ud800"]}', "texts[1] is not valid Unicode"),
    ],
)
def test_bodies_msgspec_refuses_are_answered_by_pydantic_as_before(
    live_service: LiveServer, body: bytes, field: str
) -> None:
    response = httpx.post(live_service.url + "/score", content=body, headers=JSON, timeout=30)
    assert response.status_code == 422, response.text
    assert field in response.text
