"""shared/verl_reward.py as verl loads and calls it: the file by path, `compute_score` per sample,
`compute_score_batch` for the batch reward manager, `compute_score_async` for the async loop; the
scores are /score's, and a bad answer raises instead of becoming a reward."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from harness.live_server import LiveServer, serving
from shared import RewardResponseError

TOL = 1e-4
TEXTS = ["I like you.", "You are terrible and i hate you."]


@pytest.fixture(scope="module")
def verl_module() -> ModuleType:
    # As verl's load_extern_type does: the file, by path.
    path = Path(__file__).parents[1] / "shared" / "verl_reward.py"
    spec = importlib.util.spec_from_file_location("custom_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected(server: LiveServer) -> list[float]:
    return httpx.post(server.url + "/score", json={"texts": TEXTS}).json()["scores"]


def test_compute_score_per_sample_as_the_naive_manager_calls_it(
    live_service: LiveServer, verl_module: ModuleType
) -> None:
    got = [
        verl_module.compute_score(
            data_source="toxicity",
            solution_str=text,
            ground_truth="",
            extra_info={"i": i},
            url=live_service.url,
        )
        for i, text in enumerate(TEXTS)
    ]
    assert got == pytest.approx(expected(live_service), abs=TOL)


def test_compute_score_batch_as_the_batch_manager_calls_it(
    live_service: LiveServer, verl_module: ModuleType
) -> None:
    got = verl_module.compute_score_batch(
        data_sources=["a", "b"],
        solution_strs=TEXTS,
        ground_truths=[1, None],
        extra_infos=[None, {}],
        url=live_service.url,
    )
    assert got == pytest.approx(expected(live_service), abs=TOL)
    assert verl_module.compute_score_batch(data_sources=[], solution_strs=[], url=live_service.url) == []


def test_compute_score_async_takes_the_url_from_the_environment(
    live_service: LiveServer, verl_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARD_SERVICE_URL", live_service.url)

    async def run() -> list[float]:
        calls = [verl_module.compute_score_async("toxicity", text, None, None) for text in TEXTS]
        return list(await asyncio.gather(*calls))

    assert asyncio.run(run()) == pytest.approx(expected(live_service), abs=TOL)


def test_the_url_can_come_from_reward_url_as_env_example_documents(
    live_service: LiveServer, verl_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .env.example documents REWARD_URL for every client; verl's own REWARD_SERVICE_URL comes first.
    monkeypatch.delenv("REWARD_SERVICE_URL", raising=False)
    monkeypatch.setenv("REWARD_URL", live_service.url)
    assert verl_module.compute_score("toxicity", TEXTS[0]) == pytest.approx(
        expected(live_service)[0], abs=TOL
    )
    monkeypatch.setenv("REWARD_URL", "not a url")
    monkeypatch.setenv("REWARD_SERVICE_URL", live_service.url)
    assert verl_module.compute_score("toxicity", TEXTS[0]) == pytest.approx(
        expected(live_service)[0], abs=TOL
    )


def test_no_url_is_a_clear_error(verl_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWARD_SERVICE_URL", raising=False)
    monkeypatch.delenv("REWARD_URL", raising=False)
    with pytest.raises(ValueError, match=r"reward_kwargs.url, \$REWARD_SERVICE_URL or \$REWARD_URL"):
        verl_module.compute_score("toxicity", "text")


def test_a_bad_answer_raises_instead_of_becoming_a_reward(verl_module: ModuleType) -> None:
    body = b'{"scorer": "x", "model": "m", "scores": [NaN], "truncated": 0}'
    limits = b'{"default": "x", "scorers": [], "limits": {"max_items_per_request": 8, "max_text_chars": 9}}'

    async def score(_: object) -> Response:
        return Response(body, media_type="application/json")

    async def scorers(_: object) -> Response:
        return Response(limits, media_type="application/json")

    app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/scorers", scorers)])
    with serving(app, ready_path=None) as server, pytest.raises(RewardResponseError):
        verl_module.compute_score("toxicity", "text", url=server.url)
