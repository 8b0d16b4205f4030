"""Routes that speak other serving and RL stacks' protocols over the shared scoring path: vLLM's
/classify, text-embeddings-inference's /predict, /health and /info, OpenRLHF's /get_reward and slime's
/slime/reward. Each module holds one protocol's wire schemas and routes."""

from __future__ import annotations

from fastapi import APIRouter

from reward_service.errors import ServiceError
from reward_service.protocols import openrlhf, slime, tei_info, tei_predict, vllm_classify

protocol_router = APIRouter()
protocol_router.include_router(vllm_classify.router)
protocol_router.include_router(tei_predict.router)
protocol_router.include_router(tei_info.router)
protocol_router.include_router(openrlhf.router)
protocol_router.include_router(slime.router)

_TEI_PATHS = ("/", "/predict", "/health", "/info")


def error_answer_for(path: str, error: ServiceError) -> tuple[int, dict[str, object]]:
    """The status and body of `error` as the protocol that `path` belongs to answers it; the
    service's own status and `{"detail"}` for its own routes. For answers given before a route runs
    (401, 413, shutting down)."""
    if path == "/classify":
        return vllm_classify.vllm_error(error.status_code, error.detail, error)
    if path in _TEI_PATHS or path.startswith("/predict/"):
        return tei_predict.tei_error(error.status_code, error.detail, error)
    return error.status_code, {"detail": error.detail}


__all__ = ["error_answer_for", "protocol_router"]
