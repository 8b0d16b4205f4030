"""OpenRLHF's remote reward, `POST /get_reward`, as its actors call it (`--reward.remote_url`, before
0.10.2 `--remote_rm_url`).

Request `{"query": [...], "prompts": [...], "labels": [...]}`, answer `{"rewards", "scores",
"extra_logs"}`. `query` is prompt + response decoded with special tokens; they are stripped and the
rest is scored whole with the default scorer. OpenRLHF up to v0.9.0 sends a whole rollout in one
request, so this route takes up to REWARD_OPENRLHF_MAX_ITEMS items and scores them in windows of
REWARD_MAX_ITEMS_PER_REQUEST, all within the request's one deadline; with several URLs it sends
empty lists to all but one, answered with empty lists. Errors keep the service's `{"detail": ...}`:
OpenRLHF only looks at the status.
"""

from __future__ import annotations

import re
import time

import anyio
from fastapi import APIRouter, Request

from reward_service.body_decoding import OFF_LOOP_BYTES, DecodedBodyRoute
from reward_service.errors import InvalidInput, TooManyItems
from reward_service.scoring import resolve_scorer, score_texts, settings_of
from reward_service.settings import ServiceSettings
from reward_service.validation import check_texts
from shared.schemas import ErrorBody, OpenRLHFRequest, OpenRLHFResponse

router = APIRouter(route_class=DecodedBodyRoute, tags=["protocols"])

_ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    413: {"model": ErrorBody, "description": "More than REWARD_OPENRLHF_MAX_ITEMS items, or body too large."},
    422: {"model": ErrorBody, "description": "Invalid input; the message names the field."},
    503: {"model": ErrorBody, "description": "Queue full or scorer not ready; see Retry-After."},
    504: {"model": ErrorBody, "description": "Not scored within the request's deadline."},
}


def strip_special_tokens(text: str, settings: ServiceSettings) -> str:
    """`text` without the tokenizer's special tokens (REWARD_OPENRLHF_STRIP_PATTERN), as a reward
    model trained on plain text expects it."""
    return re.sub(settings.openrlhf_strip_pattern, "", text).strip()


def _check(body: OpenRLHFRequest, settings: ServiceSettings) -> None:
    """The limits of /score on every field: item count (413), text length and Unicode (422)."""
    items = len(body.query)
    if items > settings.openrlhf_max_items:
        raise TooManyItems(
            f"{items} items in one request; the limit is {settings.openrlhf_max_items} "
            "(REWARD_OPENRLHF_MAX_ITEMS)"
        )
    for name, values in (("prompts", body.prompts), ("labels", body.labels)):
        if values is not None and len(values) != items:
            raise InvalidInput(f"'{name}' has {len(values)} items but 'query' has {items}")
    # Limits apply to what the client sent, before the special tokens are stripped.
    check_texts("query", body.query, settings)
    if body.prompts is not None:
        check_texts("prompts", body.prompts, settings)


def _checked_texts(body: OpenRLHFRequest, settings: ServiceSettings) -> list[str]:
    """The texts to score: each `query` without its special tokens, once the request is checked."""
    _check(body, settings)
    return [strip_special_tokens(query, settings) for query in body.query]


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=_ERRORS)
async def get_reward(request: Request, body: OpenRLHFRequest) -> OpenRLHFResponse:
    """OpenRLHF-compatible remote reward: one reward per `query`, in order. `labels` may be of any
    JSON type (they are not used); an empty `query` gets empty lists."""
    settings = settings_of(request)
    if sum(map(len, body.query)) > OFF_LOOP_BYTES:
        # Checking and stripping megabytes of text would hold the event loop (and /healthz) for
        # a second; body decoding moves its work off the loop at the same size.
        texts = await anyio.to_thread.run_sync(_checked_texts, body, settings)
    else:
        texts = _checked_texts(body, settings)
    if not texts:
        return OpenRLHFResponse(rewards=[], scores=[], extra_logs={})
    scorer = resolve_scorer(request, None)
    window = settings.max_items_per_request
    rewards: list[float] = []
    started = time.monotonic()  # one deadline for the whole rollout, not one per window
    # One window at a time: a 2,048-item rollout does not take the whole queue from other clients.
    for start in range(0, len(texts), window):
        output = await score_texts(
            request,
            "/get_reward",
            scorer,
            texts[start : start + window],
            budget_from=started,
            budget_setting="openrlhf_timeout_s",
        )
        rewards.extend(output.scores)
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs={})
