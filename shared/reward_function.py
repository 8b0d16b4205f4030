"""`RemoteReward`: the reward service as a TRL reward function (GRPO, RLOO, or any trainer that
calls `reward_func(prompts=..., completions=..., **kwargs)` and wants one float per completion).

    from shared import RemoteReward
    reward = RemoteReward("http://rm:8000", scorer="roberta-hate")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)

Prompts and completions may be plain text or conversations (lists of `{"role", "content"}`
messages, TRL's conversational format): a conversation is scored as its messages' contents, one
per line, without any chat-template markup. Every call goes through the shared client, with its
retries, failover over several URLs and deadlines. When the service cannot give a score, the call
raises (a `RewardClientError`): a reward is never replaced by a made-up number, and never by
`None`, which TRL would silently drop from the weighted sum.

TRL runs a reward function concurrently with the others only when it is a coroutine function
(`inspect.iscoroutinefunction`), which on Python 3.11 an object with an async `__call__` is not:
`RemoteReward(...).as_async()` returns such a function, so that a slow judge and a fast classifier
are called at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shared.client import AsyncRewardClient, RetryPolicy, RewardClient
from shared.schemas import ScoreOn

Message = dict[str, Any]
PromptOrCompletion = str | Sequence[Message]


def as_text(value: PromptOrCompletion) -> str:
    """Plain text of a prompt or completion: the string itself, or a conversation's contents."""
    if isinstance(value, str):
        return value
    parts = []
    for message in value:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # multimodal content blocks: keep the text ones
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        if not isinstance(content, str):
            raise TypeError(f"a message must have a text 'content', got {message!r:.200}")
        parts.append(content)
    return "\n".join(parts)


class RemoteReward:
    """A TRL reward function backed by the reward service; one score per completion, in order.

    `scorer`: which of the service's scorers (default: its default scorer). `score_on`:
    "query_response" scores prompt + completion (as the reference pipeline does), "response" the
    completion alone. `name`: how TRL labels it in logs (default: the scorer's name).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        scorer: str | None = None,
        score_on: ScoreOn = "query_response",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        name: str | None = None,
    ) -> None:
        if score_on not in ("query_response", "response"):
            raise ValueError(f"score_on must be 'query_response' or 'response', not {score_on!r}")
        self.urls = url
        self.scorer = scorer
        self.score_on: ScoreOn = score_on
        self._client_options: dict[str, Any] = {"api_key": api_key, "timeout_s": timeout_s, "retry": retry}
        # TRL names reward functions by `__name__` (logs: rewards/<name>/mean).
        self.__name__ = name or scorer or "remote_reward"
        self._client: RewardClient | None = None
        self._async_client: AsyncRewardClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    def _request(
        self, prompts: Sequence[PromptOrCompletion], completions: Sequence[PromptOrCompletion]
    ) -> dict[str, Any]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return {
            "queries": [as_text(p) for p in prompts],
            "responses": [as_text(c) for c in completions],
            "scorer": self.scorer,
            "score_on": self.score_on,
        }

    def __call__(
        self,
        prompts: Sequence[PromptOrCompletion],
        completions: Sequence[PromptOrCompletion],
        **kwargs: Any,
    ) -> list[float]:
        """Score synchronously (TRL calls sync reward functions one after the other)."""
        request = self._request(prompts, completions)
        if not completions:
            return []
        if self._client is None:
            self._client = RewardClient(self.urls, **self._client_options)
        return list(self._client.score(**request).scores)

    async def score_async(
        self,
        prompts: Sequence[PromptOrCompletion],
        completions: Sequence[PromptOrCompletion],
        **kwargs: Any,
    ) -> list[float]:
        request = self._request(prompts, completions)
        if not completions:
            return []
        loop = asyncio.get_running_loop()
        if self._async_client is None or self._async_loop is not loop:
            # An httpx.AsyncClient belongs to the event loop it first ran in.
            self._async_client = AsyncRewardClient(self.urls, **self._client_options)
            self._async_loop = loop
        return list((await self._async_client.score(**request)).scores)

    def as_async(self) -> Callable[..., Awaitable[list[float]]]:
        """This reward as a coroutine function, which TRL runs concurrently with other async ones."""

        async def remote_reward(
            prompts: Sequence[PromptOrCompletion], completions: Sequence[PromptOrCompletion], **kwargs: Any
        ) -> list[float]:
            return await self.score_async(prompts, completions, **kwargs)

        remote_reward.__name__ = self.__name__
        remote_reward.__qualname__ = self.__name__
        return remote_reward

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for multi-process launchers: each process opens its own connections.
        state = dict(self.__dict__)
        state.update(_client=None, _async_client=None, _async_loop=None)
        return state

    def __repr__(self) -> str:
        return f"RemoteReward({self.urls!r}, scorer={self.scorer!r}, score_on={self.score_on!r})"
