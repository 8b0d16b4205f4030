"""Hardening: bad input never 500s, failures are counted and answered in JSON, metrics stay bounded,
probes behave, configuration errors stop the process at start, shutdown under load answers 503."""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from demo import run as demo_run
from harness.engine_gate import EngineGate
from harness.live_server import LiveServer, free_port, serving
from harness.metrics import metric, wait_for_enqueued_items
from harness.service import LONG_TEXT, isolate_aws, service_settings
from reward_service.app import create_app
from reward_service.settings import ServiceSettings


def post(server: LiveServer, path: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/score", {"texts": ["fine", "a\ud800b"]}, "texts[1]"),
        ("/score", {"queries": ["q"], "responses": ["\udfffx"]}, "responses[0]"),
        ("/get_reward", {"query": ["ok", "x\ud800"]}, "query[1]"),
    ],
)
def test_a_lone_surrogate_is_a_422_naming_the_field(
    live_service: LiveServer, path: str, body: dict[str, list[str]], field: str
) -> None:
    # json.dumps escapes it as "\\ud800": valid JSON that no UTF-8 encoder can produce.
    raw = json.dumps(body)
    response = httpx.post(live_service.url + path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert field in response.json()["detail"] and "surrogate" in response.json()["detail"]


def test_get_reward_checks_the_length_before_stripping_special_tokens(live_service: LiveServer) -> None:
    # 5,000 characters is this service's limit; stripped of "<pad>", the query would be empty.
    response = post(live_service, "/get_reward", {"query": ["<pad>" * 1001]})
    assert response.status_code == 422 and "query[0]" in response.json()["detail"]


def test_return_labels_must_be_a_real_boolean(live_service: LiveServer) -> None:
    response = post(live_service, "/score", {"texts": ["a"], "return_labels": "yes"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "return_labels"


def test_unknown_scorer_names_never_become_metric_labels(live_service: LiveServer) -> None:
    before = len(httpx.get(live_service.url + "/metrics").content)
    for i in range(50):
        name = f"nope-{i}-" + "x" * 2000
        assert post(live_service, f"/score/{name}", {"texts": ["a"]}).status_code == 404
    assert post(live_service, "/score/bad%00name", {"texts": ["a"]}).status_code == 404
    metrics = httpx.get(live_service.url + "/metrics").text
    assert "nope-" not in metrics and "\x00" not in metrics
    assert 'scorer="unknown",status="404"' in metrics
    assert len(metrics.encode()) < before + 2000


def test_probes_answer_head_and_options_and_no_redirect_is_built_from_host(live_service: LiveServer) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.head(live_service.url + path).status_code == 200
        options = httpx.options(live_service.url + path)
        assert options.status_code == 204 and "GET" in options.headers["allow"]
    slash = httpx.post(live_service.url + "/score/", json={"texts": ["a"]}, headers={"host": "evil.example"})
    assert slash.status_code == 404 and "location" not in slash.headers


def test_readyz_shows_details_only_with_the_key(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_aws(monkeypatch, tmp_path)  # the judge fails to start: a non-default scorer may
    settings = service_settings(tiny_roberta, api_key="k3y", scorers=["roberta-hate", "claude-bedrock"])
    with serving(create_app(settings)) as server:
        anonymous = httpx.get(server.url + "/readyz").json()
        assert anonymous == {"status": "ready"}
        keyed = httpx.get(server.url + "/readyz", headers={"Authorization": "Bearer k3y"}).json()
        assert keyed["status"] == "ready" and set(keyed["scorers"]) == {"roberta-hate", "claude-bedrock"}


def test_an_invalid_strip_pattern_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="REWARD_OPENRLHF_STRIP_PATTERN"):
        ServiceSettings(_env_file=None, openrlhf_strip_pattern="<(unclosed")


def test_a_model_that_fails_on_an_input_gives_a_json_500_counted_as_500(
    tiny_roberta: Path, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoTokenizer, RobertaForSequenceClassification

    # A model whose vocabulary is smaller than its tokenizer's: most texts index past its embeddings.
    config = AutoConfig.from_pretrained(tiny_roberta)
    config.vocab_size = 8
    RobertaForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(tmp_path)
    app = create_app(service_settings(tmp_path))
    with serving(app) as server:
        [pid] = app.state.registry.engines.supervisor("roberta-hate").pids()
        response = post(server, "/score", {"texts": ["You are terrible and i hate you."]})
        assert response.status_code == 500
        assert "IndexError" in response.json()["detail"] and "scores" not in response.json()
        metrics = httpx.get(server.url + "/metrics").text
        assert 'reward_requests_total{route="/score",scorer="roberta-hate",status="500"} 1.0' in metrics
        # The model still answers a probe, so the engine kept running and the service stays ready.
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert app.state.registry.engines.supervisor("roberta-hate").pids() == [pid]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_default_model_that_cannot_load_stops_the_process_with_the_reason(
    tiny_roberta: Path, tmp_path: Path, workers: str
) -> None:
    env = {"REWARD_WORKERS": workers}
    log = tmp_path / "missing.log"
    process = demo_run.start_service(tmp_path / "no-such-model", free_port(), log, env)
    assert process.wait(timeout=60) == 1
    assert "no-such-model does not exist" in log.read_text()
    # Weights that the engine cannot read (the front end loads only the config and tokenizer).
    corrupt = tmp_path / "corrupt-model"
    shutil.copytree(tiny_roberta, corrupt)
    for weights in corrupt.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    log = tmp_path / "corrupt.log"
    process = demo_run.start_service(corrupt, free_port(), log, env)
    assert process.wait(timeout=90) == 1
    assert "the default scorer 'roberta-hate' cannot load" in log.read_text()


def test_requests_past_the_shutdown_grace_period_get_503_and_the_process_exits_0(
    tiny_roberta: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "service.log"
    # Every batch takes at least a second, on any machine, and holds one request at most: six
    # requests are six seconds of work whatever the engine gathered before SIGTERM (CI once saw all
    # 96 items in one batch, done inside the grace period).
    gate = EngineGate(tmp_path / "gate").pace(1.0)
    env = {
        "REWARD_GRACEFUL_SHUTDOWN_S": "1",
        "REWARD_RETRY_AFTER_S": "4",
        "REWARD_MAX_ITEMS_PER_REQUEST": "16",
        "REWARD_MAX_BATCH_ITEMS": "16",
        **gate.environment(),
    }
    process = demo_run.start_service(tiny_roberta, port, log, env)
    url = f"http://127.0.0.1:{port}/score"
    try:
        demo_run.wait_ready(f"http://127.0.0.1:{port}", process, timeout_s=60)
        with ThreadPoolExecutor(max_workers=6) as pool:
            # Several seconds of work queued: more than the one-second grace period.
            futures = [
                pool.submit(httpx.post, url, json={"texts": [LONG_TEXT] * 16}, timeout=60) for _ in range(6)
            ]
            # SIGTERM only once every request is in the engine (items batched + items waiting), so
            # that none is refused at connect by a machine slower to send them than the test.
            wait_for_enqueued_items(f"http://127.0.0.1:{port}", 6 * 16)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "4" and "shutting down" in answer.json()["detail"]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("value", ["9" * 400, "+5000", "1_000", "\u0665000", "0", "-1", "1e3"])
def test_a_bad_timeout_header_is_a_422_not_a_scorer_failure(live_service: LiveServer, value: str) -> None:
    response = post(
        live_service, "/score", {"texts": ["a"]}, headers={"X-Reward-Timeout-Ms": value.encode("utf-8")}
    )
    assert response.status_code == 422 and "X-Reward-Timeout-Ms" in response.json()["detail"]
    assert len(response.json()["detail"]) < 300  # a 400-digit value is not echoed in full
    metrics = httpx.get(live_service.url + "/metrics").text
    assert 'route="/score",scorer="roberta-hate",status="500"' not in metrics


def _count(metrics: str, route: str, scorer: str, status: int) -> float:
    return metric(metrics, f'reward_requests_total{{route="{route}",scorer="{scorer}",status="{status}"}}')


def test_every_answer_is_counted_with_its_real_status(tiny_roberta: Path) -> None:
    settings = service_settings(tiny_roberta, api_key="k3y", max_body_bytes=10_000)
    key = {"Authorization": "Bearer k3y"}
    raw = {**key, "content-type": "application/json"}
    with serving(create_app(settings)) as server:

        def metrics() -> str:
            return httpx.get(server.url + "/metrics", headers=key).text

        assert post(server, "/score", {"texts": ["a"]}).status_code == 401
        assert post(server, "/score/roberta-hate", {"texts": ["a"]}).status_code == 401
        assert httpx.post(server.url + "/score", content=b'{"texts": [', headers=raw).status_code in (
            400,
            422,
        )
        assert post(server, "/score", {"texts": "not a list"}, headers=key).status_code == 422
        assert post(server, "/score", {"texts": ["a" * 20_000]}, headers=key).status_code == 413
        assert post(server, "/score", {"texts": ["a"]}, headers=key).status_code == 200
        assert post(server, "/score/nope", {"texts": "x"}, headers=key).status_code == 422
        assert httpx.get(server.url + "/score", headers=key).status_code == 405  # not a scoring answer
        counted = metrics()
        assert _count(counted, "/score", "roberta-hate", 401) == 1
        assert _count(counted, "/score/{scorer}", "roberta-hate", 401) == 1
        parse_failures = _count(counted, "/score", "roberta-hate", 400) + _count(
            counted, "/score", "roberta-hate", 422
        )
        assert parse_failures == 2
        assert _count(counted, "/score", "roberta-hate", 413) == 1
        assert _count(counted, "/score", "roberta-hate", 200) == 1
        assert _count(counted, "/score/{scorer}", "unknown", 422) == 1
        assert "405" not in "".join(r for r in counted.splitlines() if r.startswith("reward_requests_total"))
