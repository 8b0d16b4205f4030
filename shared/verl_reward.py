"""The reward service as a verl custom reward function.

verl's own reward loop starts its own reward-model servers and cannot be pointed at another one; what
it can point at a server is a custom reward function (`custom_reward_function.path` / `.name`):

    custom_reward_function:
      path: pkg://shared.verl_reward         # or this file's path
      name: compute_score                    # compute_score_async, or compute_score_batch
      reward_kwargs:                         # passed to the function by verl
        url: http://rm:8000                  # else $REWARD_SERVICE_URL, then $REWARD_URL (comma-separated)
        scorer: roberta-hate                 # optional: the service's default scorer

`solution_str` (the decoded response) is scored alone with `/score`; `ground_truth` and
`extra_info` are not used. Every call goes through the shared client, with its retries, failover
and deadlines. When the service cannot give a score the call raises a `RewardClientError` (verl then
stops): a reward is never replaced by a made-up number.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared.client import AsyncRewardClient, RewardClient

# REWARD_URL too: the trainer's variable, the one .env.example documents for every client.
URL_VARIABLES = ("REWARD_SERVICE_URL", "REWARD_URL")

_clients: dict[tuple[str, str | None, float], RewardClient] = {}
_async_clients: dict[tuple[int, str, str | None, float], AsyncRewardClient] = {}


def _url(url: str | None) -> str:
    found = url or next((value for name in URL_VARIABLES if (value := os.environ.get(name))), None)
    if not found:
        raise ValueError(
            "no reward service URL: set custom_reward_function.reward_kwargs.url, "
            + " or ".join(f"${name}" for name in URL_VARIABLES)
        )
    return found


def _client(url: str | None, api_key: str | None, timeout_s: float) -> RewardClient:
    # One client per process and settings, so connections are kept alive across verl's calls.
    key = (_url(url), api_key, timeout_s)
    if key not in _clients:
        _clients[key] = RewardClient(key[0], api_key=api_key, timeout_s=timeout_s)
    return _clients[key]


def _async_client(url: str | None, api_key: str | None, timeout_s: float) -> AsyncRewardClient:
    # An httpx.AsyncClient belongs to the event loop it first ran in.
    key = (id(asyncio.get_running_loop()), _url(url), api_key, timeout_s)
    if key not in _async_clients:
        _async_clients[key] = AsyncRewardClient(key[1], api_key=api_key, timeout_s=timeout_s)
    return _async_clients[key]


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: object = None,
    extra_info: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    scorer: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    **kwargs: Any,
) -> float:
    """The reward of one response (verl's naive and limited reward managers call this per sample; not
    prime, which would turn a failure into a reward of 0.0: docs/protocols.md)."""
    return _client(url, api_key, timeout_s).score([solution_str], scorer=scorer).scores[0]


async def compute_score_async(
    data_source: str | None,
    solution_str: str,
    ground_truth: object = None,
    extra_info: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    scorer: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    **kwargs: Any,
) -> float:
    """As `compute_score`, for verl's async reward loop: concurrent calls share one connection pool
    and the service batches them together."""
    result = await _async_client(url, api_key, timeout_s).score([solution_str], scorer=scorer)
    return result.scores[0]


def compute_score_batch(
    data_sources: list[str | None],
    solution_strs: list[str],
    ground_truths: list[object] | None = None,
    extra_infos: list[dict[str, Any] | None] | None = None,
    *,
    url: str | None = None,
    scorer: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    **kwargs: Any,
) -> list[float]:
    """Every response of a batch in one call (verl's `reward_manager: batch`), in order."""
    if not solution_strs:
        return []
    return list(_client(url, api_key, timeout_s).score(list(solution_strs), scorer=scorer).scores)
