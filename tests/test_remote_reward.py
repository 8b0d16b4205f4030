"""`RemoteReward`, the reward service as a TRL reward function: one score per completion, in order,
through the same client as everything else; a failed call raises, it never returns made-up scores."""

from __future__ import annotations

import asyncio
import inspect
import pickle

import pytest

from harness.live_server import LiveServer, free_port
from shared import RemoteReward, RetryPolicy, RewardClient, RewardRequestError, RewardServiceUnavailable

PROMPTS = ["Say hello.", "Describe your day.", "Tell me about cats."]
COMPLETIONS = ["I hate you and everyone like you.", "A calm and pleasant walk.", "Cats are lovely friends."]


def test_scores_in_order_one_per_completion(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url)
    with RewardClient(live_service.url) as client:
        expected = client.score(queries=PROMPTS, responses=COMPLETIONS).scores
    got = reward(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=None, log_metric=print)
    assert got == pytest.approx(expected, abs=1e-5)
    # Reversed input, reversed output: scores follow their completions.
    assert reward(prompts=PROMPTS[::-1], completions=COMPLETIONS[::-1]) == pytest.approx(got[::-1], abs=1e-5)
    assert reward(prompts=[], completions=[]) == []


def test_score_on_response_ignores_the_prompt(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url, score_on="response")
    with RewardClient(live_service.url) as client:
        alone = client.score(texts=COMPLETIONS).scores
    assert reward(prompts=PROMPTS, completions=COMPLETIONS) == pytest.approx(alone, abs=1e-5)
    with pytest.raises(ValueError, match="score_on"):
        RemoteReward(live_service.url, score_on="prompt")  # type: ignore[arg-type]


def test_conversations_are_scored_as_their_text(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url)
    prompts = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    with RewardClient(live_service.url) as client:
        expected = client.score(queries=[f"Be kind.\n{p}" for p in PROMPTS], responses=COMPLETIONS).scores
    assert reward(prompts=prompts, completions=completions) == pytest.approx(expected, abs=1e-5)


def test_async_form_is_a_coroutine_function_with_the_same_scores(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url, scorer="roberta-hate", score_on="response")
    as_async = reward.as_async()
    # TRL's test for "run it concurrently with the other async reward functions".
    assert inspect.iscoroutinefunction(as_async) and as_async.__name__ == "roberta-hate"

    async def both() -> list[list[float]]:
        return list(
            await asyncio.gather(
                as_async(prompts=PROMPTS, completions=COMPLETIONS),
                as_async(prompts=PROMPTS, completions=COMPLETIONS[::-1]),
            )
        )

    first, second = asyncio.run(both())
    assert first == pytest.approx(reward(prompts=PROMPTS, completions=COMPLETIONS), abs=1e-5)
    assert second == pytest.approx(first[::-1], abs=1e-5)
    assert asyncio.run(both())[0] == pytest.approx(first, abs=1e-5)  # a new event loop works too


def test_a_failed_call_raises_and_never_returns_scores() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    reward = RemoteReward(down, retry=RetryPolicy(max_attempts=2, max_total_s=2))
    with pytest.raises(RewardServiceUnavailable):
        reward(prompts=PROMPTS, completions=COMPLETIONS)
    with pytest.raises(RewardServiceUnavailable):
        asyncio.run(reward.as_async()(prompts=PROMPTS, completions=COMPLETIONS))


def test_an_unknown_scorer_is_refused_not_retried(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url, scorer="no-such-scorer")
    with pytest.raises(RewardRequestError) as refused:
        reward(prompts=PROMPTS, completions=COMPLETIONS)
    assert refused.value.status_code == 404


def test_picklable_for_multi_process_launchers(live_service: LiveServer) -> None:
    reward = RemoteReward(live_service.url, score_on="response")
    before = reward(prompts=PROMPTS, completions=COMPLETIONS)  # opens a connection
    copy = pickle.loads(pickle.dumps(reward))
    assert copy(prompts=PROMPTS, completions=COMPLETIONS) == pytest.approx(before, abs=1e-5)
