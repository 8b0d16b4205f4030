"""Every error status the service promises, through real HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.engine_gate import EngineGate, wait_for_items_sent
from harness.live_server import LiveServer, serving
from harness.service import LONG_TEXT, service_settings
from reward_service.app import create_app
from shared import RetryPolicy, RewardClient


def post(server: LiveServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"texts": []}, "must not be empty"),
        ({"texts": "I like you."}, "texts"),
        ({"texts": [1, 2]}, "texts"),
        ({"queries": ["a", "b"], "responses": ["c"]}, "'queries' has 2 items but 'responses' has 1"),
        ({"queries": ["a"]}, "'responses' is missing"),
        ({"texts": ["a"], "queries": ["a"], "responses": ["b"]}, "not both"),
        ({}, "give 'texts'"),
        ({"texts": ["a"], "score_on": "everything"}, "score_on"),
        ({"texts": ["a"], "truncation_side": "middle"}, "truncation_side"),
        ({"texts": ["a"], "unknown_knob": 3}, "unknown_knob"),
    ],
)
def test_invalid_bodies_get_422_naming_the_problem(
    live_service: LiveServer, body: object, field: str
) -> None:
    response = post(live_service, "/score", body)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_text_over_the_char_limit_is_422_naming_the_index(live_service: LiveServer) -> None:
    response = post(live_service, "/score", {"queries": ["ok", "ok"], "responses": ["fine", "x" * 5001]})
    assert response.status_code == 422
    assert "responses[1]" in response.json()["detail"] and "5000" in response.json()["detail"]


def test_malformed_json_is_422_not_500(live_service: LiveServer) -> None:
    response = httpx.post(
        live_service.url + "/score", content=b'{"texts": ["a"', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_too_many_items_is_413(live_service: LiveServer) -> None:
    response = post(live_service, "/score", {"texts": ["a"] * 65})
    assert response.status_code == 413
    assert "64" in response.json()["detail"]


def test_unknown_scorer_is_404_listing_known_ones(live_service: LiveServer) -> None:
    response = post(live_service, "/score/gpt-judge", {"texts": ["a"]})
    assert response.status_code == 404
    assert "gpt-judge" in response.json()["detail"] and "roberta-hate" in response.json()["detail"]


def test_oversized_body_is_413(tiny_roberta: Path) -> None:
    with serving(create_app(service_settings(tiny_roberta, max_body_bytes=2048))) as server:
        response = post(server, "/score", {"texts": ["x" * 4000]})
        assert response.status_code == 413

        def chunks():
            yield b'{"texts": ["'
            for _ in range(10):
                yield b"y" * 500
            yield b'"]}'

        # No Content-Length (chunked upload): the limit still holds.
        chunked = httpx.post(
            server.url + "/score", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413


def test_model_that_cannot_load_gives_503_with_retry_after(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "no-such-model", retry_after_s=7)
    with serving(create_app(settings), ready_path=None) as server:
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/scorers").json()["scorers"][0]["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "7"
        assert "no-such-model" in ready.json()["scorers"]["roberta-hate"]
        scored = post(server, "/score", {"texts": ["a"]})
        assert scored.status_code == 503 and scored.headers["retry-after"] == "7"
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_full_queue_gives_503_with_retry_after(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    settings = service_settings(tiny_roberta, max_items_per_request=16, queue_capacity=16, retry_after_s=2)
    app = create_app(settings)
    with serving(app) as server:
        scorer = app.state.registry.get(None)
        body = {"texts": [LONG_TEXT] * 16}
        with ThreadPoolExecutor(max_workers=3) as pool:
            gate.close()
            first = pool.submit(post, server, "/score", body)  # one batch, held in the engine
            gate.wait_held(1)
            second = pool.submit(post, server, "/score", body)  # fills the queue
            wait_for_items_sent(scorer, 32)
            third = pool.submit(post, server, "/score", body)  # no room left
            wait_for_items_sent(scorer, 48)
            gate.open()
            assert third.result().status_code == 503
            assert third.result().headers["retry-after"] == "2"
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert (
            'reward_rejected_items_total{reason="queue_full",scorer="roberta-hate"} 16.0'
            in httpx.get(server.url + "/metrics").text
        )


def test_an_empty_api_key_variable_leaves_the_service_open_and_the_client_sends_no_key(
    tiny_roberta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `REWARD_API_KEY=` (.env.example: "Empty: no authentication") on both sides of the connection.
    monkeypatch.setenv("REWARD_API_KEY", " ")
    with serving(create_app(service_settings(tiny_roberta))) as server:
        assert httpx.post(server.url + "/score", json={"texts": ["a"]}).status_code == 200
        with RewardClient(server.url, retry=RetryPolicy(max_attempts=1)) as client:
            assert len(client.score(["a"]).scores) == 1


def test_api_key_guards_every_route_but_health(tiny_roberta: Path) -> None:
    with serving(create_app(service_settings(tiny_roberta, api_key="s3cret-key"))) as server:
        good = {"Authorization": "Bearer s3cret-key"}
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret-key"}):
            response = httpx.post(server.url + "/score", json={"texts": ["a"]}, headers=wrong)
            assert response.status_code == 401
            assert "s3cret-key" not in response.text
            assert response.headers["www-authenticate"] == "Bearer"
            for path in ("/scorers", "/metrics", "/openapi.json", "/docs"):
                assert httpx.get(server.url + path, headers=wrong).status_code == 401
            assert (
                httpx.post(server.url + "/get_reward", json={"query": ["a"]}, headers=wrong).status_code
                == 401
            )
        assert httpx.post(server.url + "/score", json={"texts": ["a"]}, headers=good).status_code == 200
        assert httpx.get(server.url + "/metrics", headers=good).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
