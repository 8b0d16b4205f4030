"""HTTP routes: translate requests into scorer calls and results back into responses."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from reward_service.api_key import has_api_key
from reward_service.body_decoding import DecodedBodyRoute, before_reading_body
from reward_service.scoring import (
    admit_before_reading,
    metrics_of,
    registry_of,
    resolve_scorer,
    score_texts,
    settings_of,
)
from reward_service.validation import check_limits
from shared.schemas import (
    ErrorBody,
    Limits,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
)

router = APIRouter(route_class=DecodedBodyRoute)

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


async def _score(request: Request, route: str, scorer_name: str | None, body: ScoreRequest) -> ScoreResponse:
    hint = "leave out 'return_labels'"
    scorer = resolve_scorer(request, scorer_name, class_logits_hint=hint if body.return_labels else None)
    texts = check_limits(body, settings_of(request))
    output = await score_texts(
        request, route, scorer, texts, truncation_side=body.truncation_side, return_labels=body.return_labels
    )
    return ScoreResponse(
        scorer=scorer.name,
        model=scorer.info().model,
        scores=output.scores,
        truncated=output.truncated,
        labels=output.labels,
        members=output.members,
    )


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
@before_reading_body(admit_before_reading)
async def score_default(request: Request, body: ScoreRequest) -> ScoreResponse:
    """Score with the default scorer (the first of REWARD_SCORERS)."""
    return await _score(request, "/score", None, body)


@router.post("/score/{scorer}", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
@before_reading_body(admit_before_reading)
async def score_named(request: Request, scorer: str, body: ScoreRequest) -> ScoreResponse:
    """Score with the named scorer (see GET /scorers)."""
    return await _score(request, "/score/{scorer}", scorer, body)


@router.get("/scorers", response_model=ScorersResponse, tags=["info"])
async def list_scorers(request: Request) -> ScorersResponse:
    """The configured scorers, whether each is ready, and the request limits."""
    settings = settings_of(request)
    return ScorersResponse(
        default=registry_of(request).default,
        scorers=registry_of(request).infos(),
        limits=Limits(
            max_items_per_request=settings.max_items_per_request, max_text_chars=settings.max_text_chars
        ),
    )


# HEAD answers as GET does but stays out of the OpenAPI schema: one function on both methods of
# one route would give two operations the same operationId.
@router.get("/healthz", tags=["info"])
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.options("/healthz", include_in_schema=False)
@router.options("/readyz", include_in_schema=False)
async def probe_options() -> Response:
    return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS"})


@router.get("/readyz", tags=["info"], responses={503: {"description": "Some scorer is not ready."}})
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 503 while any scorer is loading or the default scorer cannot score, else 200.

    A non-default scorer that failed to start (e.g. Bedrock without credentials) does not block
    readiness, so the others stay usable; the body says what is missing. Probes need no key, so
    with REWARD_API_KEY set, only a request with the key sees the scorers' states and errors.
    """
    registry = registry_of(request)
    infos = registry.infos()
    blocked = any(info.state == "loading" for info in infos) or not registry.get(None).ready
    body: dict[str, object] = {"status": "not ready" if blocked else "ready"}
    if has_api_key(request.headers.raw, settings_of(request)):
        body["scorers"] = {info.name: info.error if info.error else info.state for info in infos}
    if blocked:
        headers = {"Retry-After": str(settings_of(request).retry_after_s)}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse(body)


@router.get("/metrics", tags=["info"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(metrics_of(request).exposition(), media_type=CONTENT_TYPE_LATEST)
