"""The service over real HTTP with the Bedrock judge (fake Bedrock), RoBERTa and an ensemble of both."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from harness.fake_bedrock import FakeBedrock, error_reply
from harness.live_server import serving
from harness.service import bedrock_settings, isolate_aws, service_settings
from reward_service.app import create_app
from reward_service.settings import ServiceSettings
from shared.client import TIMEOUT_HEADER

LIKE, HATE = "I like you.", "You are terrible and i hate you."


def roberta_judge_and_ensemble(tiny_roberta: Path, fake_bedrock: FakeBedrock) -> ServiceSettings:
    """RoBERTa, the judge against the fake, and `safety`, the ensemble of the two."""
    return service_settings(
        tiny_roberta,
        scorers=["roberta-hate", "claude-bedrock"],
        ensembles="safety=roberta-hate:0.5,claude-bedrock:0.5",
        bedrock_endpoint_url=fake_bedrock.url,
    )


def test_persistent_upstream_failure_is_a_502_with_no_scores(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.handler = lambda text, request: error_reply(
        503, "ServiceUnavailableException", "Bedrock is unavailable"
    )
    with serving(create_app(bedrock_settings(fake_bedrock, bedrock_retry_total_s=0.5))) as server:
        response = httpx.post(server.url + "/score", json={"texts": [LIKE, HATE, "third"]}, timeout=30)
        metrics = httpx.get(server.url + "/metrics").text
    assert response.status_code == 502
    body = response.json()
    assert set(body) == {"detail"}  # nothing that could be mistaken for scores
    assert "could not score 3 of 3 texts" in body["detail"]
    assert "ServiceUnavailableException: Bedrock is unavailable" in body["detail"]
    assert (
        'reward_judge_calls_total{outcome="ServiceUnavailableException",scorer="claude-bedrock"} 3.0'
        in metrics
    )


def test_service_serves_roberta_when_bedrock_is_not_configured(
    tiny_roberta: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_aws(monkeypatch, tmp_path)
    settings = service_settings(tiny_roberta, scorers=["roberta-hate", "claude-bedrock"])
    with serving(create_app(settings)) as server:
        ready = httpx.get(server.url + "/readyz")
        scorers = {info["name"]: info for info in httpx.get(server.url + "/scorers").json()["scorers"]}
        scored = httpx.post(server.url + "/score", json={"texts": [LIKE]})
        judged = httpx.post(server.url + "/score/claude-bedrock", json={"texts": [LIKE]})
    assert ready.status_code == 200
    assert "no AWS region" in ready.json()["scorers"]["claude-bedrock"]
    assert scored.status_code == 200 and len(scored.json()["scores"]) == 1
    judge = scorers["claude-bedrock"]
    assert judge["state"] == "failed" and judge["ready"] is False
    assert "no AWS region" in judge["error"] and "REWARD_BEDROCK_REGION" in judge["error"]
    assert judged.status_code == 503 and "no AWS region" in judged.json()["detail"]


def test_ensemble_is_the_weighted_sum_of_its_members_and_returns_them(
    tiny_roberta: Path, fake_bedrock: FakeBedrock
) -> None:
    settings = roberta_judge_and_ensemble(tiny_roberta, fake_bedrock)
    texts = [LIKE, HATE]
    with serving(create_app(settings)) as server:
        listed = httpx.get(server.url + "/scorers").json()["scorers"]
        ensemble = httpx.post(server.url + "/score/safety", json={"texts": texts}).json()
        roberta = httpx.post(server.url + "/score/roberta-hate", json={"texts": texts}).json()["scores"]
        judge = httpx.post(server.url + "/score/claude-bedrock", json={"texts": texts}).json()["scores"]
    safety = next(info for info in listed if info["name"] == "safety")
    assert safety["kind"] == "ensemble" and safety["ready"] is True
    assert ensemble["scorer"] == "safety" and ensemble["model"] == "0.5*roberta-hate + 0.5*claude-bedrock"
    assert judge == [5.0, -4.0]
    assert ensemble["members"]["claude-bedrock"] == judge
    assert ensemble["members"]["roberta-hate"] == pytest.approx(roberta, abs=1e-4)
    assert ensemble["scores"] == pytest.approx(
        [0.5 * r + 0.5 * j for r, j in zip(roberta, judge, strict=True)], abs=1e-4
    )
    assert len(fake_bedrock.calls) == 2  # the judge's second request came from its cache


def test_a_throttled_judge_answers_504_before_the_clients_deadline_and_stops_retrying(
    fake_bedrock: FakeBedrock,
) -> None:
    fake_bedrock.handler = lambda text, request: error_reply(429, "ThrottlingException", "Too many requests")
    settings = bedrock_settings(fake_bedrock, bedrock_retry_total_s=60, bedrock_max_attempts=1000)
    with serving(create_app(settings)) as server:
        started = time.monotonic()
        response = httpx.post(
            server.url + "/score",
            json={"texts": [LIKE, HATE]},
            headers={TIMEOUT_HEADER: "2000"},
            timeout=30,
        )
        took = time.monotonic() - started
        calls_at_answer = len(fake_bedrock.calls)
        time.sleep(1.5)
        metrics = httpx.get(server.url + "/metrics").text
    # Not after the 60 s retry budget: within the 2 s the client said it would wait.
    assert response.status_code == 504 and took < 2.0
    assert "deadline" in response.json()["detail"]
    # The judge threads stopped retrying once the deadline had passed.
    assert len(fake_bedrock.calls) <= calls_at_answer + 2
    assert 'reward_requests_total{route="/score",scorer="claude-bedrock",status="504"} 1.0' in metrics


def test_an_openrlhf_rollout_scored_in_windows_has_one_deadline_for_all_of_them(
    fake_bedrock: FakeBedrock,
) -> None:
    """Three windows of 0.7 s each against a 1.25 s budget (1.5 s less the margin): each fits alone,
    the second overruns what the first left; the client hears a 504 within the time it said it would
    wait, not a 200 after it has gone, and the third window never starts."""
    fake_bedrock.latency_s = 0.7
    settings = bedrock_settings(fake_bedrock, max_items_per_request=2, openrlhf_max_items=10)
    with serving(create_app(settings)) as server:
        started = time.monotonic()
        response = httpx.post(
            server.url + "/get_reward",
            json={"query": [f"sample {i}" for i in range(6)]},
            headers={TIMEOUT_HEADER: "1500"},
            timeout=30,
        )
        took = time.monotonic() - started
        time.sleep(0.8)  # a third window, had one started, would have called the judge by now
        calls = len(fake_bedrock.calls)
    assert response.status_code == 504 and took < 1.5
    assert "deadline" in response.json()["detail"]
    assert calls == 4  # the first two windows' texts


@pytest.mark.parametrize("scorer", ["claude-bedrock", "safety"])
def test_labels_asked_of_a_judge_or_an_ensemble_are_a_422_before_any_call(
    tiny_roberta: Path, fake_bedrock: FakeBedrock, scorer: str
) -> None:
    settings = roberta_judge_and_ensemble(tiny_roberta, fake_bedrock)
    with serving(create_app(settings)) as server:
        response = httpx.post(server.url + f"/score/{scorer}", json={"texts": [LIKE], "return_labels": True})
    assert response.status_code == 422
    assert "return_labels" in response.json()["detail"] and scorer in response.json()["detail"]
    assert fake_bedrock.calls == []  # refused before any paid call


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_timeout_header_is_a_422_naming_it(fake_bedrock: FakeBedrock, value: str) -> None:
    with serving(create_app(bedrock_settings(fake_bedrock))) as server:
        response = httpx.post(server.url + "/score", json={"texts": [LIKE]}, headers={TIMEOUT_HEADER: value})
    assert response.status_code == 422 and TIMEOUT_HEADER in response.json()["detail"]


def test_without_a_timeout_header_the_service_default_bounds_a_request(fake_bedrock: FakeBedrock) -> None:
    fake_bedrock.latency_s = 5.0
    settings = bedrock_settings(fake_bedrock, request_timeout_s=1.0, openrlhf_timeout_s=2.0)
    with serving(create_app(settings)) as server:
        started = time.monotonic()
        response = httpx.post(server.url + "/score", json={"texts": [LIKE]}, timeout=30)
        scored_s = time.monotonic() - started
        started = time.monotonic()
        # OpenRLHF sends no timeout header: /get_reward has its own default, for a whole rollout.
        rollout = httpx.post(server.url + "/get_reward", json={"query": [LIKE]}, timeout=30)
        rollout_s = time.monotonic() - started
    assert response.status_code == 504 and "REWARD_REQUEST_TIMEOUT_S" in response.json()["detail"]
    assert rollout.status_code == 504 and "REWARD_OPENRLHF_TIMEOUT_S" in rollout.json()["detail"]
    assert scored_s < 2.0 <= rollout_s < 4.0
