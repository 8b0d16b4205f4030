"""Outside RL and serving clients as they really call: OpenRLHF's /get_reward with any labels, empty
lists and whole rollouts; slime's /slime/reward; huggingface_hub's health_check and
get_endpoint_info on TEI's /health and /info; every protocol route's errors (401 and 413 included)
in its protocol's shape; and the API key's scheme and header count."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient

from harness.live_server import LiveServer, serving
from harness.service import service_settings
from reward_service.app import create_app

TOL = 1e-4
KEY = "s3cret"
LIKE, HATE = "I like you.", "You are terrible and i hate you."


def post(server: LiveServer, path: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)  # type: ignore[arg-type]


def scores(server: LiveServer, texts: list[str]) -> list[float]:
    return post(server, "/score", {"texts": texts}).json()["scores"]


# OpenRLHF /get_reward


@pytest.mark.parametrize(
    "labels",
    [[1, 0], [0.5, None], [{"answer": 42}, ["a", "b"]], ["x", True], None],
    ids=["ints", "float-null", "dict-list", "str-bool", "absent"],
)
def test_get_reward_takes_labels_of_any_json_type(live_service: LiveServer, labels: list | None) -> None:
    body: dict[str, object] = {"query": [LIKE, HATE], "prompts": ["", ""]}
    if labels is not None:
        body["labels"] = labels
    response = post(live_service, "/get_reward", body)
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == pytest.approx(scores(live_service, [LIKE, HATE]), abs=TOL)


def test_get_reward_answers_empty_lists_with_empty_lists(live_service: LiveServer) -> None:
    # What OpenRLHF with several reward URLs sends to all but one of them.
    response = post(live_service, "/get_reward", {"query": [], "prompts": [], "labels": []})
    assert response.status_code == 200
    assert response.json() == {"rewards": [], "scores": [], "extra_logs": {}}


def test_get_reward_scores_a_whole_rollout_in_windows(live_service: LiveServer) -> None:
    # OpenRLHF up to v0.9.0 sends rollout_batch_size x n_samples_per_prompt items at once: 2,048 here,
    # 32 times this service's item limit of 64.
    texts = [f"{LIKE} {i}" if i % 3 else f"{HATE} {i}" for i in range(2048)]
    response = post(
        live_service, "/get_reward", {"query": texts, "prompts": texts, "labels": list(range(2048))}
    )
    assert response.status_code == 200, response.text
    rewards = response.json()["rewards"]
    expected = [s for start in range(0, 2048, 64) for s in scores(live_service, texts[start : start + 64])]
    assert rewards == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"query": ["a", "b"], "prompts": ["a"]}, 422, "'prompts' has 1 items"),
        ({"query": ["a"], "labels": [1, 2]}, 422, "'labels' has 2 items"),
        ({"query": ["a"], "prompts": ["x" * 5001]}, 422, "prompts[0]"),
        ({"query": ["a"], "prompts": ["\ud800"]}, 422, "prompts[0]"),
        ({"query": ["a"], "rewards_key": "r"}, 422, "rewards_key"),
    ],
)
def test_every_get_reward_field_is_bounded(
    live_service: LiveServer, body: dict[str, object], status: int, needle: str
) -> None:
    response = httpx.post(
        live_service.url + "/get_reward",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    assert needle in json.dumps(response.json()["detail"])


def test_get_reward_item_limit(tiny_roberta: Path) -> None:
    settings = service_settings(tiny_roberta, max_items_per_request=4, openrlhf_max_items=10)
    with serving(create_app(settings)) as server:
        assert post(server, "/get_reward", {"query": ["a"] * 10}).status_code == 200
        refused = post(server, "/get_reward", {"query": ["a"] * 11})
    assert refused.status_code == 413 and "REWARD_OPENRLHF_MAX_ITEMS" in refused.json()["detail"]


# slime /slime/reward


def test_slime_reward_is_a_number_scored_like_a_get_reward_query(live_service: LiveServer) -> None:
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    response = post(live_service, "/slime/reward", {"prompt": prompt, "response": HATE, "label": 3})
    assert response.status_code == 200
    reward = response.json()
    assert isinstance(reward, float)
    query = post(live_service, "/get_reward", {"query": [prompt + HATE]}).json()["rewards"][0]
    assert reward == pytest.approx(query, abs=TOL)


def test_slime_prompt_may_be_chat_messages(live_service: LiveServer) -> None:
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi"}]
    reward = post(live_service, "/slime/reward", {"prompt": messages, "response": LIKE, "label": None}).json()
    assert reward == pytest.approx(scores(live_service, ["Be kind.\nSay hi" + LIKE])[0], abs=TOL)


def test_slime_prompt_messages_with_null_content_add_no_text(live_service: LiveServer) -> None:
    # An assistant's tool-call turn in a dataset's messages: `"content": null` beside `tool_calls`.
    messages = [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
        {"role": "tool", "content": "hi"},
    ]
    response = post(live_service, "/slime/reward", {"prompt": messages, "response": LIKE})
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(scores(live_service, ["Say hi\nhi" + LIKE])[0], abs=TOL)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "p"},
        {"prompt": [{"role": "user"}], "response": "r"},
        {"prompt": "p", "response": "x" * 5001},
        {"prompt": "\udc00", "response": "r"},
        {"prompt": "p", "response": "r", "extra": 1},
    ],
    ids=["no-response", "message-without-content", "too-long", "surrogate", "unknown-field"],
)
def test_slime_bad_bodies_are_422(live_service: LiveServer, body: dict[str, object]) -> None:
    response = httpx.post(
        live_service.url + "/slime/reward",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["detail"]


# TEI /health and /info through huggingface_hub


def test_inference_client_health_check_and_endpoint_info(live_service: LiveServer) -> None:
    client = InferenceClient(model=live_service.url, provider="hf-inference")
    assert client.health_check() is True
    info = client.get_endpoint_info()
    scorers = httpx.get(live_service.url + "/scorers").json()
    default = next(s for s in scorers["scorers"] if s["name"] == scorers["default"])
    assert info["model_id"] == default["model"] and info["max_input_length"] == default["max_tokens"]
    id2label = {str(i): name for i, name in enumerate(default["labels"])}
    assert info["model_type"]["classifier"]["id2label"] == id2label
    assert info["max_client_batch_size"] == scorers["limits"]["max_items_per_request"]
    assert info["max_batch_tokens"] > 0 and info["version"]
    # Every field TEI's own /info requires.
    required = {"model_id", "model_dtype", "served_model_name", "model_type", "max_concurrent_requests"}
    required |= {"max_input_length", "max_batch_tokens", "max_client_batch_size", "auto_truncate", "version"}
    assert required <= set(info) and info["served_model_name"] == info["model_id"]


def test_health_is_503_in_tei_shape_while_the_model_cannot_load(tmp_path: Path) -> None:
    with serving(create_app(service_settings(tmp_path / "missing")), ready_path=None) as server:
        response = httpx.get(server.url + "/health")
        assert InferenceClient(model=server.url, provider="hf-inference").health_check() is False
    assert response.status_code == 503 and response.json()["error_type"] == "Unhealthy"


# Errors before a route runs, in each protocol's shape


@pytest.fixture(scope="module")
def keyed_service(tiny_roberta: Path):  # type: ignore[no-untyped-def]
    settings = service_settings(tiny_roberta, api_key=KEY, max_body_bytes=4096)
    with serving(create_app(settings)) as server:
        yield server


def vllm_shape(body: dict, status: int) -> bool:
    return body["error"]["code"] == status and bool(body["error"]["message"]) and "type" in body["error"]


def tei_shape(body: dict, _: int) -> bool:
    return bool(body["error"]) and bool(body["error_type"])


def service_shape(body: dict, _: int) -> bool:
    return bool(body["detail"])


ROUTES = [
    ("/classify", {"input": ["a"]}, vllm_shape),
    ("/predict", {"inputs": "a"}, tei_shape),
    ("/", {"inputs": "a"}, tei_shape),
    ("/predict/roberta-hate", {"inputs": "a"}, tei_shape),
    ("/get_reward", {"query": ["a"]}, service_shape),
    ("/slime/reward", {"prompt": "p", "response": "r"}, service_shape),
    ("/score", {"texts": ["a"]}, service_shape),
]


@pytest.mark.parametrize(("path", "body", "shape"), ROUTES, ids=[r[0] for r in ROUTES])
def test_401_and_413_come_in_the_protocols_shape(keyed_service: LiveServer, path, body, shape) -> None:  # type: ignore[no-untyped-def]
    missing = post(keyed_service, path, body)
    assert missing.status_code == 401 and shape(missing.json(), 401), missing.text
    auth = {"Authorization": f"Bearer {KEY}"}
    assert post(keyed_service, path, body, headers=auth).status_code == 200
    too_large = httpx.post(
        keyed_service.url + path,
        content=json.dumps({"x": "y" * 8000}),
        headers={**auth, "content-type": "application/json"},
    )
    assert too_large.status_code == 413 and shape(too_large.json(), 413), too_large.text


def test_tei_health_needs_no_key_as_in_tei_and_info_needs_it(keyed_service: LiveServer) -> None:
    # TEI's health routes (GET /health, GET /) are public in TEI; its other routes need the key.
    assert InferenceClient(model=keyed_service.url, provider="hf-inference").health_check() is True
    assert httpx.get(keyed_service.url + "/").status_code == 200
    assert httpx.post(keyed_service.url + "/", json={"inputs": "a"}).status_code == 401
    assert httpx.get(keyed_service.url + "/info").status_code == 401
    assert InferenceClient(model=keyed_service.url, provider="hf-inference", token=KEY).get_endpoint_info()[
        "model_id"
    ]


def test_tei_health_without_the_key_says_only_unhealthy(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "missing", api_key=KEY)
    with serving(create_app(settings), ready_path=None) as server:
        anonymous = httpx.get(server.url + "/health")
        keyed = httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {KEY}"})
    assert anonymous.status_code == 503 and anonymous.json() == {
        "error": "unhealthy",
        "error_type": "Unhealthy",
    }
    assert keyed.status_code == 503 and "is not ready" in keyed.json()["error"]
    assert anonymous.headers["retry-after"] and keyed.headers["retry-after"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_auth_scheme_is_case_insensitive(keyed_service: LiveServer, scheme: str) -> None:
    response = post(keyed_service, "/score", {"texts": ["a"]}, headers={"Authorization": f"{scheme} {KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize("second", [KEY, "wrong"])
def test_two_authorization_headers_never_authenticate(keyed_service: LiveServer, second: str) -> None:
    headers = [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {second}")]
    scored = httpx.post(keyed_service.url + "/score", json={"texts": ["a"]}, headers=headers)
    assert scored.status_code == 401
    # /readyz needs no key, but shows the scorers only to a request that has it: not to this one.
    ready = httpx.get(keyed_service.url + "/readyz", headers=headers)
    assert ready.status_code == 200 and "scorers" not in ready.json()
    one = httpx.get(keyed_service.url + "/readyz", headers={"Authorization": f"bearer {KEY}"})
    assert "scorers" in one.json()


# /classify: bad input is a 4xx, never a 500


@pytest.mark.parametrize(
    "body",
    [
        {"model": "\ud800", "input": ["a"]},
        {"model": "\ud800", "input": []},
        {"model": "x\udfff", "input": "a"},
    ],
)
def test_classify_lone_surrogate_model_is_a_400(live_service: LiveServer, body: dict[str, object]) -> None:
    response = httpx.post(
        live_service.url + "/classify", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["error"]["message"]


def test_classify_empty_inputs_are_never_a_500(live_service: LiveServer) -> None:
    assert post(live_service, "/classify", {"input": ""}).status_code == 400
    empty = post(live_service, "/classify", {"input": []})
    assert empty.status_code == 200 and empty.json()["data"] == []
