"""Routes that speak other serving stacks' protocols over the shared scoring path: vLLM's /classify
and text-embeddings-inference's /predict. Each module holds one protocol's wire schemas and routes."""

from __future__ import annotations

from fastapi import APIRouter

from reward_service.protocols import tei_predict, vllm_classify

protocol_router = APIRouter()
protocol_router.include_router(vllm_classify.router)
protocol_router.include_router(tei_predict.router)

__all__ = ["protocol_router"]
