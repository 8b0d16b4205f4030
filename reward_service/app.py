"""The FastAPI application: wiring of settings, scorers, middleware, error mapping and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp

from reward_service import __version__
from reward_service.allocator import pin_mmap_threshold
from reward_service.errors import ServiceError
from reward_service.metrics import ServiceMetrics
from reward_service.protocols import protocol_router
from reward_service.request_context import RequestContext
from reward_service.request_counter import RequestCounter
from reward_service.routes import router
from reward_service.scorers import ScorerRegistry, build_registry
from reward_service.scoring import ClientGone
from reward_service.security import BearerAuth, BodySizeLimit, ShutdownGuard
from reward_service.settings import ServiceSettings, settings_from_parent

log = logging.getLogger(__name__)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default echoes the offending input back; with 20k-character texts that is noise,
    # so keep only where the problem is and what it is.
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # The traceback is logged by the server; the client gets the same JSON shape as every error.
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


async def _client_gone(_: Request, exc: Exception) -> Response:
    # Nobody is listening; answer the way nginx logs it so access logs show what happened.
    return Response(status_code=499)


async def default_scorer_error(registry: ScorerRegistry) -> str | None:
    """Once the default scorer has loaded or failed (after `registry.start()`): why it failed, or None."""
    default = registry.get(None)
    while (info := default.info()).state == "loading":
        await asyncio.sleep(0.2)
    return f"the default scorer '{info.name}' cannot load: {info.error}" if info.state == "failed" else None


async def _report_if_default_cannot_load(
    registry: ScorerRegistry, loading: asyncio.Task[None], on_fatal: Callable[[str], None]
) -> None:
    """Call `on_fatal` if the default scorer fails to load: retrying a configuration error is futile."""
    await loading
    if reason := await default_scorer_error(registry):
        on_fatal(reason)


class RewardServiceApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Around Starlette's outermost layer (the one that answers an unexpected error with 500), so
        # that every answer, that 500 included, carries the request id and timing headers and is
        # counted with the status it was sent with.
        counted = RequestCounter(
            super().build_middleware_stack(),
            openapi=self.openapi,
            metrics=lambda: self.state.metrics,
            registry=lambda: self.state.registry,
        )
        return RequestContext(counted)


def create_app(
    settings: ServiceSettings | None = None, on_fatal: Callable[[str], None] | None = None
) -> FastAPI:
    """The service. `on_fatal(reason)` is called if the default scorer cannot load (the CLI exits)."""
    settings = settings or ServiceSettings()
    pin_mmap_threshold()
    metrics = ServiceMetrics()
    registry = build_registry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers at once and /readyz reports progress.
        loading = asyncio.create_task(registry.start())
        watching = (
            asyncio.create_task(_report_if_default_cannot_load(registry, loading, on_fatal))
            if on_fatal
            else None
        )
        try:
            yield
        finally:
            for task in (loading, watching):
                if task is not None and not task.done():
                    task.cancel()
            await registry.close()

    app = RewardServiceApp(
        title="RLAIF reward service",
        version=__version__,
        description="Batched reward scoring for RL from AI feedback: a RoBERTa toxicity classifier "
        "(reward = logit of 'nothate') and LLM judges, behind one HTTP API.",
        lifespan=lifespan,
        # A POST to /score/ gets 404, not a 307 whose Location is built from the Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.include_router(router)
    app.include_router(protocol_router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key.get_secret_value())
    # Outermost, so that it sees the cancellation whichever layer was running.
    app.add_middleware(ShutdownGuard, retry_after_s=settings.retry_after_s)
    return app


def worker_app() -> FastAPI:
    """The app of one `reward-service --workers N` process (uvicorn's factory, imported by name in
    each worker, so it lives here and not in the heavier `cli`): the settings its parent serialized."""
    return create_app(settings_from_parent())
