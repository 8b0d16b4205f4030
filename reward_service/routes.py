"""HTTP routes: translate requests into scorer calls and results back into responses."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from reward_service.allocator import LARGE_REQUEST_CHARS, release_freed_memory
from reward_service.deadline import request_budget_s
from reward_service.errors import DeadlineExceeded, InvalidInput, ScoringFailed, ServiceError
from reward_service.metrics import ServiceMetrics
from reward_service.scorers import ScoreOptions, ScorerRegistry
from reward_service.security import has_api_key
from reward_service.settings import ServiceSettings
from reward_service.validation import check_count, check_limits, check_texts
from shared.client import TIMEOUT_HEADER
from shared.schemas import (
    ErrorBody,
    Limits,
    OpenRLHFRequest,
    OpenRLHFResponse,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
)

router = APIRouter()
log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN_SCORER_LABEL = "unknown"

_ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown scorer."},
    413: {"model": ErrorBody, "description": "Too many items, or body too large."},
    422: {"model": ErrorBody, "description": "Invalid input; the message names the field."},
    424: {"model": ErrorBody, "description": "A remote scorer refused some inputs for good (no retry)."},
    502: {"model": ErrorBody, "description": "A remote scorer failed on some inputs."},
    503: {"model": ErrorBody, "description": "Queue full or scorer not ready; see Retry-After."},
    504: {
        "model": ErrorBody,
        "description": "Not scored within the request's deadline (X-Reward-Timeout-Ms), or a remote "
        "scorer timed out on some inputs.",
    },
}


def _registry(request: Request) -> ScorerRegistry:
    return request.app.state.registry


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def _metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


class ClientGone(Exception):
    """The client closed the connection before its scores were ready."""


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    The body has been read by now, so the next ASGI message can only be the disconnect. Cancelling
    the scorer call makes the engine client send CancelItems, and the engine drops the queued items.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this request is cancelled itself (shutdown past its grace period).
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
    if work_task not in done:
        raise ClientGone
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _score(request: Request, route: str, scorer_name: str | None, body: ScoreRequest) -> ScoreResponse:
    settings, metrics, registry = _settings(request), _metrics(request), _registry(request)
    # Labels only from configured names: a label per arbitrary URL would grow /metrics without bound.
    label = registry.default if scorer_name is None else scorer_name
    if label not in registry.scorers:
        label = UNKNOWN_SCORER_LABEL
    started = time.perf_counter()
    status = 500
    try:
        scorer = registry.get(scorer_name)
        texts = check_limits(body, settings)
        budget_s = request_budget_s(request.headers, settings)
        options = ScoreOptions(
            truncation_side=body.truncation_side or settings.truncation_side,
            return_labels=body.return_labels,
            deadline=time.monotonic() + budget_s,
        )
        try:
            async with asyncio.timeout(budget_s):
                output = await _unless_disconnected(request, scorer.score(texts, options))
        except TimeoutError:
            raise DeadlineExceeded(
                f"scorer '{label}' could not score {len(texts)} input(s) within the request's deadline "
                f"({budget_s:.1f} s: {TIMEOUT_HEADER} less a margin, or REWARD_REQUEST_TIMEOUT_S)"
            ) from None
        status = 200
    except ServiceError as exc:
        status = exc.status_code
        raise
    except ClientGone:
        status = 499
        raise
    except asyncio.CancelledError:
        # Only a shutdown cancels a request; ShutdownGuard answers it with 503 + Retry-After.
        status = 503
        raise
    except Exception as exc:
        log.exception("scorer '%s' failed unexpectedly on %s", label, route)
        raise ScoringFailed(f"scorer '{label}' failed: {type(exc).__name__}: {exc}") from exc
    finally:
        metrics.requests.labels(route, label, str(status)).inc()
    metrics.items.labels(scorer.name).inc(len(texts))
    if sum(map(len, texts)) > LARGE_REQUEST_CHARS:
        await anyio.to_thread.run_sync(release_freed_memory)
    metrics.request_latency.labels(scorer.name).observe(time.perf_counter() - started)
    return ScoreResponse(
        scorer=scorer.name,
        model=scorer.info().model,
        scores=output.scores,
        truncated=output.truncated,
        labels=output.labels,
        members=output.members,
    )


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
async def score_default(request: Request, body: ScoreRequest) -> ScoreResponse:
    """Score with the default scorer (the first of REWARD_SCORERS)."""
    return await _score(request, "/score", None, body)


@router.post("/score/{scorer}", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
async def score_named(request: Request, scorer: str, body: ScoreRequest) -> ScoreResponse:
    """Score with the named scorer (see GET /scorers)."""
    return await _score(request, "/score/{scorer}", scorer, body)


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=_ERRORS, tags=["scoring"])
async def get_reward(request: Request, body: OpenRLHFRequest) -> OpenRLHFResponse:
    """OpenRLHF-compatible remote reward (`--remote_rm_url http://host:port/get_reward`).

    `query` holds prompt + response decoded with special tokens; those are stripped before scoring
    with the default scorer.
    """
    settings = _settings(request)
    if not body.query:
        raise InvalidInput("'query' must not be empty")
    # Limits apply to what the client sent, before the special tokens are stripped.
    check_count(len(body.query), settings)
    check_texts("query", body.query, settings)
    pattern = re.compile(settings.openrlhf_strip_pattern)
    texts = [pattern.sub("", query).strip() for query in body.query]
    result = await _score(request, "/get_reward", None, ScoreRequest(texts=texts))
    return OpenRLHFResponse(rewards=result.scores, scores=result.scores, extra_logs={})


@router.get("/scorers", response_model=ScorersResponse, tags=["info"])
async def list_scorers(request: Request) -> ScorersResponse:
    """The configured scorers, whether each is ready, and the request limits."""
    settings = _settings(request)
    return ScorersResponse(
        default=_registry(request).default,
        scorers=_registry(request).infos(),
        limits=Limits(
            max_items_per_request=settings.max_items_per_request, max_text_chars=settings.max_text_chars
        ),
    )


@router.api_route("/healthz", methods=["GET", "HEAD"], tags=["info"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.options("/healthz", include_in_schema=False)
@router.options("/readyz", include_in_schema=False)
async def probe_options() -> Response:
    return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS"})


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    tags=["info"],
    responses={503: {"description": "Some scorer is not ready."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 503 while any scorer is loading or the default scorer cannot score, else 200.

    A non-default scorer that failed to start (e.g. Bedrock without credentials) does not block
    readiness, so the others stay usable; the body says what is missing. Probes need no key, so
    with REWARD_API_KEY set, only a request with the key sees the scorers' states and errors.
    """
    registry = _registry(request)
    infos = registry.infos()
    blocked = any(info.state == "loading" for info in infos) or not registry.get(None).ready
    body: dict[str, object] = {"status": "not ready" if blocked else "ready"}
    if has_api_key(request.headers.get("authorization"), _settings(request)):
        body["scorers"] = {info.name: info.error if info.error else info.state for info in infos}
    if blocked:
        headers = {"Retry-After": str(_settings(request).retry_after_s)}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse(body)


@router.get("/metrics", tags=["info"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(_metrics(request).exposition(), media_type=CONTENT_TYPE_LATEST)
