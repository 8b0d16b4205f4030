"""Errors in each protocol's own shape: a route class that catches what the shared scoring path,
request validation and FastAPI's body parsing raise on that protocol's routes, and answers it as
that protocol's clients expect.

Answers given before a route runs (401, body too large, shutting down) take the same shape through
`reward_service.protocols.error_answer_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from reward_service.body_decoding import DecodedBodyRoute
from reward_service.errors import InvalidInput, ServiceError

ErrorBody = Callable[[int, str, Exception], tuple[int, dict[str, object]]]
"""(status the service would send, message, the error) -> (status to send, body)."""


def validation_message(exc: RequestValidationError) -> str:
    """Where each problem is and what it is, without echoing the (possibly huge) input back."""
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', '')}")
    return "; ".join(parts)


def protocol_route(error_body: ErrorBody) -> type[DecodedBodyRoute]:
    """An APIRoute whose validation and service errors are answered with `error_body`."""

    class ProtocolRoute(DecodedBodyRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    status, body = error_body(InvalidInput.status_code, validation_message(exc), exc)
                    return JSONResponse(body, status_code=status)
                except HTTPException as exc:  # FastAPI's own (Starlette's class), e.g. a body it cannot parse
                    status, body = error_body(exc.status_code, str(exc.detail), exc)
                    return JSONResponse(body, status_code=status, headers=exc.headers)
                except ServiceError as exc:
                    status, body = error_body(exc.status_code, exc.detail, exc)
                    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
                    return JSONResponse(body, status_code=status, headers=headers)

            return handle

    return ProtocolRoute
