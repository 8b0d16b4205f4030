"""text-embeddings-inference's `GET /health` and `GET /info`, which huggingface_hub's
`InferenceClient(URL).health_check()` and `.get_endpoint_info()` call.

`/health` is 200 when the default scorer can score, 503 otherwise (TEI's
`{"error", "error_type": "Unhealthy"}`). `/info` describes the default scorer with TEI's field names
where they apply; fields that describe TEI's own machinery (model sha, tokenization workers, docker
label) are left out.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from reward_service import __version__
from reward_service.api_key import has_api_key
from reward_service.scoring import registry_of, settings_of

router = APIRouter(tags=["protocols"])


class ClassifierType(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ModelType(BaseModel):
    classifier: ClassifierType


class TEIInfo(BaseModel):
    model_id: str = Field(description="The default scorer's model id or path.")
    model_dtype: str | None = Field(description="Weights' dtype (float32, float16, ...); null for a judge.")
    served_model_name: str = Field(description="As TEI's default: the model id.")
    model_type: ModelType | None = Field(description="The classifier's labels; null for a judge or ensemble.")
    max_concurrent_requests: int = Field(
        description="Requests one front-end process serves at once: its HTTP connections "
        "(REWARD_MAX_CONNECTIONS)."
    )
    max_input_length: int | None = Field(description="The model's window in tokens; null for a judge.")
    max_batch_tokens: int = Field(description="Token budget of one model batch (REWARD_MAX_BATCH_TOKENS).")
    max_batch_requests: int = Field(description="Most items in one model batch (REWARD_MAX_BATCH_ITEMS).")
    max_client_batch_size: int = Field(description="Most texts per request (REWARD_MAX_ITEMS_PER_REQUEST).")
    auto_truncate: Literal[True] = Field(
        default=True, description="Inputs longer than the window are cut unless `truncate: false`."
    )
    version: str
    scorer: str = Field(description="Not TEI's: the default scorer's name (GET /scorers).")


@router.get("/health", responses={503: {"description": "The default scorer cannot score (yet)."}})
async def health(request: Request) -> Response:
    """TEI's health route: 200 (empty body) when the default scorer is ready, else 503. It needs no
    API key, as in TEI; without the key a 503 says only `unhealthy` (as `/readyz` says only ready
    or not), with it also why."""
    info = registry_of(request).get(None).info()
    if info.ready:
        return Response(status_code=200)
    settings = settings_of(request)
    headers = {"Retry-After": str(settings.retry_after_s)}
    message = "unhealthy"
    if has_api_key(request.headers.raw, settings):
        message = f"scorer '{info.name}' is not ready: {info.error or 'still loading'}"
    return JSONResponse({"error": message, "error_type": "Unhealthy"}, status_code=503, headers=headers)


@router.get("/", responses={503: {"description": "The default scorer cannot score (yet)."}})
async def health_root(request: Request) -> Response:
    """TEI's other health route (`GET /`; `POST /` predicts)."""
    return await health(request)


@router.get("/info", response_model=TEIInfo)
async def info(request: Request) -> TEIInfo:
    """TEI's model info, for the default scorer."""
    settings = settings_of(request)
    scorer = registry_of(request).get(None)
    described = scorer.info()
    labels = described.labels if scorer.class_logits else None
    model_type = (
        ModelType(
            classifier=ClassifierType(
                id2label={str(i): name for i, name in enumerate(labels)},
                label2id={name: i for i, name in enumerate(labels)},
            )
        )
        if labels
        else None
    )
    return TEIInfo(
        model_id=described.model,
        model_dtype=described.dtype,
        served_model_name=described.model,
        model_type=model_type,
        max_concurrent_requests=settings.max_connections,
        max_input_length=described.max_tokens,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=settings.max_batch_items,
        max_client_batch_size=settings.max_items_per_request,
        version=__version__,
        scorer=described.name,
    )
