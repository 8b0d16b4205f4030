"""Other stacks' protocols over real HTTP: vLLM's /classify as verl posts it, TEI's /predict through
huggingface_hub's InferenceClient, and OpenRLHF's per-sample /get_reward at high concurrency."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient

from harness.fake_bedrock import FakeBedrock
from harness.live_server import LiveServer, serving
from harness.metrics import metric
from harness.reference_scoring import DirectScorer
from harness.service import LONG_TEXT, service_settings
from reward_service.app import create_app
from reward_service.engine.client import EngineUnavailable
from reward_service.errors import (
    BodyTooLarge,
    InputTooLong,
    NotReady,
    Overloaded,
    ServiceError,
    TooManyItems,
    Unauthorized,
    UpstreamTimeout,
)
from reward_service.protocols.tei_predict import tei_error

TOL = 1e-4
LIKE, HATE = "I like you.", "You are terrible and i hate you."


@pytest.fixture(scope="module")
def direct(tiny_roberta: Path) -> DirectScorer:
    return DirectScorer(tiny_roberta)


def logits(direct: DirectScorer, text: str) -> list[float]:
    return direct.logits_of_ids(direct.tokenizer(text)["input_ids"])


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def post(server: LiveServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


# vLLM /classify


def test_classify_as_verl_posts_it_returns_the_raw_logits(
    live_service: LiveServer, direct: DirectScorer, tiny_roberta: Path
) -> None:
    # verl's DisRM: model = its reward model path, one prompt string, activation off; reads probs[-1].
    body = {"model": str(tiny_roberta), "input": HATE, "activation": False}
    response = post(live_service, "/classify", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"id", "object", "created", "model", "data", "usage"}
    assert answer["object"] == "list" and answer["id"].startswith("classify-")
    assert answer["model"] == str(tiny_roberta)
    [item] = answer["data"]
    expected = logits(direct, HATE)  # [nothate, hate]
    assert item["index"] == 0 and item["num_classes"] == 2
    assert item["probs"] == pytest.approx(expected, abs=TOL)
    assert item["label"] == ("nothate" if expected[0] > expected[1] else "hate")
    tokens = len(direct.tokenizer(HATE)["input_ids"])
    assert answer["usage"] == {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


@pytest.mark.parametrize("flag", [{}, {"use_activation": True}, {"softmax": True}])
def test_classify_gives_probabilities_in_input_order_by_default(
    live_service: LiveServer, direct: DirectScorer, flag: dict[str, bool]
) -> None:
    texts = [LIKE, HATE, "Thank you."]
    response = post(live_service, "/classify", {"model": "roberta-hate", "input": texts, **flag})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    for text, item in zip(texts, data, strict=True):
        assert item["probs"] == pytest.approx(softmax(logits(direct, text)), abs=TOL)


def test_classify_without_a_model_uses_the_default_scorer(live_service: LiveServer) -> None:
    response = post(live_service, "/classify", {"input": [LIKE], "use_activation": False})
    assert response.status_code == 200 and response.json()["model"] == "roberta-hate"
    empty = post(live_service, "/classify", {"input": []})
    assert empty.status_code == 200 and empty.json()["data"] == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "gpt-4", "input": LIKE}, 404, "unknown scorer 'gpt-4'"),
        ({"input": LIKE, "activation": False, "use_activation": True}, 400, "disagree"),
        ({"input": [1, 2, 3]}, 400, "input"),
        ({"input": ""}, 400, "must not be empty"),
        ({"input": [LIKE, ""]}, 400, "'input[1]' must not be empty"),
        ({"input": LIKE, "messages": []}, 400, "messages"),
        ({"input": LIKE, "truncate_prompt_tokens": 16}, 400, "-1"),
        ({"input": LONG_TEXT}, 400, "window of 512 tokens"),
    ],
)
def test_classify_errors_are_vllm_error_objects(
    live_service: LiveServer, body: dict[str, object], status: int, needle: str
) -> None:
    response = post(live_service, "/classify", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and needle in error["message"]
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


def test_classify_cuts_long_inputs_only_when_asked(live_service: LiveServer) -> None:
    body = {"input": [LONG_TEXT], "truncate_prompt_tokens": -1, "use_activation": False}
    response = post(live_service, "/classify", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 512


def test_a_judge_answers_classify_only_with_activation_off(
    fake_bedrock: FakeBedrock, tiny_roberta: Path
) -> None:
    settings = service_settings(
        tiny_roberta, scorers=["roberta-hate", "claude-bedrock"], bedrock_endpoint_url=fake_bedrock.url
    )
    with serving(create_app(settings)) as server:
        refused = post(server, "/classify", {"model": "claude-bedrock", "input": [LIKE]})
        raw = post(
            server, "/classify", {"model": "claude-bedrock", "input": [LIKE, HATE], "activation": False}
        )
        tei_refused = post(server, "/predict/claude-bedrock", {"inputs": LIKE})
        tei_raw = post(server, "/predict/claude-bedrock", {"inputs": LIKE, "raw_scores": True})
    assert refused.status_code == 400 and "use_activation" in refused.json()["error"]["message"]
    assert [item["probs"] for item in raw.json()["data"]] == [[5.0], [-4.0]]
    assert {item["label"] for item in raw.json()["data"]} == {"claude-bedrock"}
    assert tei_refused.status_code == 422 and "raw_scores" in tei_refused.json()["error"]
    assert tei_raw.json() == [{"score": 5.0, "label": "claude-bedrock"}]


# TEI /predict


def test_inference_client_text_classification_against_the_service(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    # As a TEI user: the client posts {"inputs": text, "parameters": {}} to the URL itself (POST /).
    client = InferenceClient(model=live_service.url)
    expected = dict(zip(["nothate", "hate"], softmax(logits(direct, HATE)), strict=True))
    top = max(expected, key=expected.__getitem__)
    # huggingface_hub keeps the first element of a TEI answer: the highest-scoring label.
    result = client.text_classification(HATE)
    assert result.label == top and result.score == pytest.approx(expected[top], abs=TOL)
    raw = client.text_classification(HATE, function_to_apply="none")
    assert raw.score == pytest.approx(max(logits(direct, HATE)), abs=TOL)


def test_predict_single_and_batch_shapes_sorted_by_score(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    single = post(live_service, "/predict", {"inputs": HATE}).json()
    as_list = post(live_service, "/predict", {"inputs": [HATE]}).json()
    batch = post(live_service, "/predict", {"inputs": [[LIKE], [HATE]], "raw_scores": True}).json()
    assert single == as_list
    assert [p["score"] for p in single] == sorted((p["score"] for p in single), reverse=True)
    assert {p["label"]: p["score"] for p in single} == pytest.approx(
        dict(zip(["nothate", "hate"], softmax(logits(direct, HATE)), strict=True)), abs=TOL
    )
    assert len(batch) == 2
    for text, predictions in zip([LIKE, HATE], batch, strict=True):
        by_label = {p["label"]: p["score"] for p in predictions}
        assert [by_label["nothate"], by_label["hate"]] == pytest.approx(logits(direct, text), abs=TOL)
    top = post(live_service, "/predict", {"inputs": HATE, "parameters": {"top_k": 1}}).json()
    assert top == single[:1]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"inputs": [LIKE, HATE]}, 422, "pair"),
        ({"inputs": [[LIKE], [LIKE, HATE]]}, 422, "inputs[1] is a pair"),
        ({"inputs": []}, 422, "must not be empty"),
        (
            {"inputs": LIKE, "raw_scores": True, "parameters": {"function_to_apply": "softmax"}},
            422,
            "contradicts",
        ),
        ({"inputs": LIKE, "truncation_direction": "middle"}, 422, "truncation_direction"),
        # TEI's statuses: a text over the window without truncation and too many texts are 422s.
        ({"inputs": LONG_TEXT, "truncate": False}, 422, "window of 512 tokens"),
        ({"inputs": [["x"]] * 65}, 422, "64"),
    ],
)
def test_predict_errors_are_tei_error_bodies(
    live_service: LiveServer, body: dict[str, object], status: int, needle: str
) -> None:
    response = post(live_service, "/predict", body)
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == "Validation" and needle in response.json()["error"]


def test_predict_truncates_long_inputs_on_the_side_asked(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    text = "You are terrible. " + LONG_TEXT
    for side in ("Right", "left"):
        response = post(
            live_service, "/predict", {"inputs": text, "raw_scores": True, "truncation_direction": side}
        )
        assert response.status_code == 200, response.text
        ids = direct.tokenizer(text, truncation=True, max_length=512, truncation_side=side.lower())[
            "input_ids"
        ]
        by_label = {p["label"]: p["score"] for p in response.json()}
        assert by_label["nothate"] == pytest.approx(direct.logits_of_ids(ids)[0], abs=TOL)


# OpenRLHF /get_reward, one sample per request


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    return metric(metrics, f"{name}_sum"), metric(metrics, f"{name}_count")


def test_openrlhf_per_sample_requests_are_batched_and_answered_in_order(
    live_service: LiveServer, direct: DirectScorer
) -> None:
    prompts = [f"Human: say something about number {i}\n\nAssistant:" for i in range(200)]
    queries = [
        f"{p} {'I hate you.' if i % 3 else 'Thanks, you are kind.'}</s>" for i, p in enumerate(prompts)
    ]
    before = _histogram(httpx.get(live_service.url + "/metrics").text, "reward_batch_size")

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=live_service.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post("/get_reward", json={"query": [q], "prompts": [p], "labels": [None]})
                    for q, p in zip(queries, prompts, strict=True)
                )
            )

    responses = asyncio.run(send_all())
    after = _histogram(httpx.get(live_service.url + "/metrics").text, "reward_batch_size")
    for query, response in zip(queries, responses, strict=True):
        assert response.status_code == 200, response.text
        [reward] = response.json()["rewards"]
        assert reward == pytest.approx(direct.nothate_logit(query.removesuffix("</s>").strip()), abs=TOL)
    items, batches = after[0] - before[0], after[1] - before[1]
    assert items == 200
    assert batches < 100, f"{batches} batches for 200 one-sample requests: they were not merged"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (Overloaded("the queue is full", 1), 429, "Overloaded"),
        (NotReady("loading", 1), 503, "Unhealthy"),
        (EngineUnavailable("the scoring engine stopped; it is being restarted", 1), 503, "Unhealthy"),
        (TooManyItems("65 texts; the limit is 64"), 422, "Validation"),
        (InputTooLong("over the window"), 422, "Validation"),
        (BodyTooLarge("body too large"), 413, "Validation"),
        (UpstreamTimeout("the judge timed out"), 504, "Backend"),
        (Unauthorized("missing key"), 401, "Unauthorized"),
    ],
)
def test_tei_errors_take_teis_status_and_error_type(error: ServiceError, status: int, kind: str) -> None:
    """As TEI's router answers them: an overload is its 429, a batch too large or an input over the
    window its 422 validation error, and error types are its ErrorType variants' names."""
    sent, body = tei_error(error.status_code, error.detail, error)
    assert sent == status and body == {"error": error.detail, "error_type": kind}
