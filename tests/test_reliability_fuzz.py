"""Hostile input: property-based fuzzing of every route from the OpenAPI schema, plus hand-made
nasties. Nothing may produce a 5xx; every rejection is a 4xx with a message."""

from __future__ import annotations

import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from harness.live_server import LiveServer

# CI runs a reduced number of examples; RELIABILITY_FULL=1 runs the full set.
EXAMPLES = 200 if os.environ.get("RELIABILITY_FULL") else 40


@pytest.fixture(scope="module")
def api_schema(live_service: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(live_service.url + "/openapi.json")


def _error_message(body: object) -> object:
    """The message in each protocol's error shape: ours (`detail`), TEI's (`error`: a string) and
    vLLM's (`error.message`)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    return body.get("detail") or (error.get("message") if isinstance(error, dict) else error)


def _rejection_has_a_message(response: schemathesis.Response) -> None:
    if 400 <= response.status_code < 500:
        assert _error_message(response.json()), f"{response.status_code} without a message"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_route_answers_5xx_to_generated_input(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/score", "/score/{scorer}", "/get_reward", "/scorers"}
    if mode == GenerationMode.NEGATIVE:
        # Only routes with a body can be sent invalid data.
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            _rejection_has_a_message(response)

        no_server_error()


def _post_raw(server: LiveServer, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(server.url + "/score", content=body, headers={"content-type": content_type}, timeout=60)


def _assert_4xx_with_message(response: httpx.Response, status: int | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert response.json()["detail"]


HOSTILE_BODIES = [
    ("deeply nested json", b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    ("non-utf8 bytes", b'{"texts": ["\xff\xfe\xfa"]}', "application/json", 400),
    ("wrong content type", b"texts=hello", "application/x-www-form-urlencoded", 422),
    ("plain text body", b"I like you.", "text/plain", 422),
    ("json null", b"null", "application/json", 422),
    ("json number", b"1e999999", "application/json", 422),
    ("negative knob", b'{"texts": ["a"], "return_labels": -1}', "application/json", 422),
    ("absurd knob", b'{"texts": ["a"], "truncation_side": 1e308}', "application/json", 422),
    ("unknown field", b'{"texts": ["a"], "batch_size": 999999}', "application/json", 422),
    ("texts of numbers", b'{"texts": [1e308, -1]}', "application/json", 422),
]


@pytest.mark.parametrize(("name", "body", "content_type", "status"), HOSTILE_BODIES)
def test_hand_made_hostile_bodies_are_rejected_cleanly(
    live_service: LiveServer, name: str, body: bytes, content_type: str, status: int
) -> None:
    _assert_4xx_with_message(_post_raw(live_service, body, content_type), status)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# A small body with a deeply nested value where an option or label goes: msgspec gives up on it
# with RecursionError while skipping it, which must be a 4xx like any other undecodable body.
# Each route answers in its own protocol's shape (ours `detail`, vLLM's `error.message`, TEI's `error`).
NESTED_OPTIONS = [
    ("/score", '{"texts": ["a"], "score_on": %s}', "detail"),
    ("/score/roberta-hate", '{"texts": ["a"], "return_labels": %s}', "detail"),
    ("/get_reward", '{"query": ["a"], "labels": [%s]}', "detail"),
    ("/slime/reward", '{"prompt": "a", "response": "b", "label": %s}', "detail"),
    ("/classify", '{"input": ["a"], "use_activation": %s}', "vllm"),
    ("/predict", '{"inputs": "a", "raw_scores": %s}', "tei"),
    ("/", '{"inputs": "a", "parameters": {"top_k": %s}}', "tei"),
]
BROKEN_BODIES = [
    ("/classify", b'{"input": ["h\xff"]}', "vllm"),
    ("/predict", b'{"inputs": "h\xff"}', "tei"),
    ("/classify", b'{"input": ' + _nested(3000).encode() + b"}", "vllm"),
]


def _assert_refused_in_shape(response: httpx.Response, shape: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    if shape == "vllm":
        assert body["error"]["message"] and body["error"]["code"] == response.status_code
    elif shape == "tei":
        assert isinstance(body["error"], str) and body["error"] and body["error_type"]
    else:
        assert body["detail"]


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(("path", "template", "shape"), NESTED_OPTIONS)
def test_a_deeply_nested_option_is_refused_in_the_routes_shape(
    live_service: LiveServer, path: str, template: str, shape: str, depth: int
) -> None:
    body = (template % _nested(depth)).encode()
    response = httpx.post(
        live_service.url + path, content=body, headers={"content-type": "application/json"}, timeout=60
    )
    _assert_refused_in_shape(response, shape)


@pytest.mark.parametrize(("path", "body", "shape"), BROKEN_BODIES)
def test_a_body_that_cannot_be_parsed_is_refused_in_the_routes_shape(
    live_service: LiveServer, path: str, body: bytes, shape: str
) -> None:
    response = httpx.post(
        live_service.url + path, content=body, headers={"content-type": "application/json"}, timeout=60
    )
    _assert_refused_in_shape(response, shape)


def test_control_characters_and_emoji_are_scored(live_service: LiveServer) -> None:
    texts = ["\x00\x01\x1b[31m\u202e", "🔥💀🤬" * 50, "\ud7ff\ufffd", "", " "]
    response = httpx.post(live_service.url + "/score", json={"texts": texts})
    assert response.status_code == 200
    assert len(response.json()["scores"]) == len(texts)


def test_a_hundred_thousand_short_texts_is_413(live_service: LiveServer) -> None:
    body = json.dumps({"texts": ["hi"] * 100_000}).encode()
    _assert_4xx_with_message(_post_raw(live_service, body), 413)


def test_one_ten_megabyte_text_is_422_naming_it(live_service: LiveServer) -> None:
    body = json.dumps({"texts": ["ok", "x" * 10_000_000]}).encode()
    response = _post_raw(live_service, body)
    _assert_4xx_with_message(response, 422)
    assert "texts[1]" in response.json()["detail"]


def test_openrlhf_route_rejects_hostile_bodies(live_service: LiveServer) -> None:
    for body in (b'{"query": "abc"}', b'{"prompts": ["a"]}', b"[]", b'{"query": ["a"], "labels": [1, 2]}'):
        response = httpx.post(
            live_service.url + "/get_reward", content=body, headers={"content-type": "application/json"}
        )
        _assert_4xx_with_message(response, 422)


def test_service_is_still_healthy_after_the_abuse(live_service: LiveServer) -> None:
    # The abuse is sent here, so that this holds whatever ran before (or did not run at all).
    for _, body, content_type, _ in HOSTILE_BODIES:
        assert _post_raw(live_service, body, content_type).status_code < 500
    assert (
        _post_raw(live_service, json.dumps({"texts": ["ok", "x" * 10_000_000]}).encode()).status_code == 422
    )
    assert httpx.get(live_service.url + "/readyz").status_code == 200
    assert httpx.post(live_service.url + "/score", json={"texts": ["I like you."]}).status_code == 200
