"""The reward service through real HTTP, against the tiny RoBERTa classifier."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from demo.corpus import labelled_sentences
from harness.live_server import LiveServer
from harness.reference_scoring import DirectScorer

TOL = 1e-4


@pytest.fixture(scope="module")
def direct(tiny_roberta: Path) -> DirectScorer:
    return DirectScorer(tiny_roberta)


def post(server: LiveServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_scores_equal_a_direct_forward_pass_in_input_order(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    texts = [t for t, _ in labelled_sentences(20, seed=3)]
    response = post(live_service, "/score", {"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scorer"] == "roberta-hate"
    assert len(body["scores"]) == len(texts)
    for text, score in zip(texts, body["scores"], strict=True):
        assert score == pytest.approx(direct.nothate_logit(text), abs=TOL)


def test_named_scorer_route_matches_default_route(live_service: LiveServer) -> None:
    texts = ["I like you.", "You are terrible and i hate you."]
    default = post(live_service, "/score", {"texts": texts}).json()["scores"]
    named = post(live_service, "/score/roberta-hate", {"texts": texts}).json()["scores"]
    assert named == pytest.approx(default, abs=TOL)


def test_pairs_score_query_plus_response_or_response_alone(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    queries = ["Summarize: hello there. Summary:", "Summarize: what now? Summary:"]
    responses = [" You are stupid and worthless.", " Thank you for your help."]
    joined = post(live_service, "/score", {"queries": queries, "responses": responses}).json()["scores"]
    alone = post(
        live_service, "/score", {"queries": queries, "responses": responses, "score_on": "response"}
    ).json()["scores"]
    for q, r, s_joined, s_alone in zip(queries, responses, joined, alone, strict=True):
        assert s_joined == pytest.approx(direct.nothate_logit(q + r), abs=TOL)
        assert s_alone == pytest.approx(direct.nothate_logit(r), abs=TOL)


def test_scores_do_not_depend_on_batch_mates_under_concurrency(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    rng = random.Random(7)
    pool = [t for t, _ in labelled_sentences(60, seed=11)]
    # Mixed lengths so that batches get padded differently from one request to the next.
    requests = [
        [" ".join(rng.sample(pool, rng.randint(1, 6))) for _ in range(rng.randint(1, 12))] for _ in range(48)
    ]
    expected = {text: direct.nothate_logit(text) for req in requests for text in req}

    def run(texts: list[str]) -> list[float]:
        response = post(live_service, "/score", {"texts": texts})
        assert response.status_code == 200, response.text
        return response.json()["scores"]

    with ThreadPoolExecutor(max_workers=16) as pool_exec:
        results = list(pool_exec.map(run, requests))
    for texts, scores in zip(requests, results, strict=True):
        assert scores == pytest.approx([expected[t] for t in texts], abs=TOL)


def test_return_labels_gives_every_label_and_probabilities(live_service: LiveServer) -> None:
    body = post(
        live_service, "/score", {"texts": ["I like you.", "I hate you."], "return_labels": True}
    ).json()
    assert len(body["labels"]) == 2
    for score, labels in zip(body["scores"], body["labels"], strict=True):
        assert set(labels) == {"nothate", "hate"}
        assert labels["nothate"]["logit"] == pytest.approx(score, abs=1e-6)
        assert sum(v["probability"] for v in labels.values()) == pytest.approx(1.0, abs=1e-6)


def test_trained_stand_in_ranks_hostile_text_lower(live_service: LiveServer) -> None:
    scores = post(
        live_service, "/score", {"texts": ["I like you.", "You are terrible and i hate you."]}
    ).json()["scores"]
    assert scores[0] > scores[1]


def test_long_inputs_are_truncated_keeping_the_end_by_default(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    head = "Thank you for your help. " * 150
    tail = "You are stupid and worthless. " * 20
    text = head + tail
    ids = direct.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 510
    keep_end = direct.logits_of_ids([0] + ids[-510:] + [2])[0]
    keep_start = direct.logits_of_ids([0] + ids[:510] + [2])[0]

    left = post(live_service, "/score", {"texts": [text, "short"]}).json()
    assert left["truncated"] == 1
    assert left["scores"][0] == pytest.approx(keep_end, abs=TOL)
    right = post(live_service, "/score", {"texts": [text], "truncation_side": "right"}).json()
    assert right["truncated"] == 1
    assert right["scores"][0] == pytest.approx(keep_start, abs=TOL)


def test_openrlhf_route_strips_special_tokens(live_service: LiveServer) -> None:
    decoded = [
        "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nI like you.<|im_end|><|endoftext|>"
    ]
    plain = "user\nSay hi\nassistant\nI like you."
    body = post(
        live_service, "/get_reward", {"query": decoded, "prompts": ["Say hi"], "labels": [None]}
    ).json()
    expected = post(live_service, "/score", {"texts": [plain]}).json()["scores"]
    assert body["rewards"] == pytest.approx(expected, abs=TOL)
    assert body["scores"] == body["rewards"]
    assert isinstance(body["extra_logs"], dict)


def test_scorers_health_ready_metrics_and_docs(live_service: LiveServer) -> None:
    scorers = httpx.get(live_service.url + "/scorers").json()
    assert scorers["default"] == "roberta-hate"
    info = scorers["scorers"][0]
    assert info["ready"] is True and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["labels"] == ["nothate", "hate"] and info["max_tokens"] == 512
    assert scorers["limits"] == {"max_items_per_request": 64, "max_text_chars": 5000}
    assert httpx.get(live_service.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(live_service.url + "/readyz").status_code == 200
    metrics = httpx.get(live_service.url + "/metrics")
    assert "reward_requests_total" in metrics.text and "reward_queue_depth" in metrics.text
    assert "/score/{scorer}" in httpx.get(live_service.url + "/openapi.json").json()["paths"]
    assert httpx.get(live_service.url + "/docs").status_code == 200


def test_openapi_operation_ids_are_unique_and_probes_answer_head(live_service: LiveServer) -> None:
    # Generated clients name their methods after operationIds: two alike would collide.
    paths = httpx.get(live_service.url + "/openapi.json").json()["paths"]
    ids = [operation["operationId"] for methods in paths.values() for operation in methods.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    for probe in ("/healthz", "/readyz"):
        assert "get" in paths[probe] and "head" not in paths[probe]
        assert httpx.head(live_service.url + probe).status_code == 200
