"""ASGI middleware: bearer-token auth, a request body size limit, and 503 for requests cut short by
shutdown; each answers in the error shape of the protocol whose route was asked for."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.api_key import bearer_key_matches
from reward_service.errors import BodyTooLarge, ServiceError, ShuttingDown, Unauthorized
from reward_service.protocols import error_answer_for

# Health probes answer without the key (what they say without it is only up or down). TEI's health
# routes are public in TEI too: `GET /health` and `GET /` (POST / is its prediction alias and needs
# the key).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/health"})
OPEN_GETS = frozenset({"/"})


def is_open(scope: Scope) -> bool:
    """Whether this request needs no API key: a health probe."""
    path = scope["path"]
    return path in OPEN_PATHS or (path in OPEN_GETS and scope.get("method") in ("GET", "HEAD"))


async def _send_error(
    send: Send, scope: Scope, error: ServiceError, headers: list[tuple[bytes, bytes]]
) -> None:
    """`error` as JSON, with the status and in the shape of the protocol whose route was asked for."""
    status, answer = error_answer_for(scope.get("path", ""), error)
    body = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ShutdownGuard:
    """A request still running when the shutdown grace period ends is cancelled by the server;
    answer it with 503 + Retry-After (retry elsewhere) instead of a bare 500."""

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self._retry_after = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if scope["type"] != "http" or started or task is None:
                raise
            task.uncancel()
            error = ShuttingDown("the server is shutting down; retry (on another replica)", self._retry_after)
            await _send_error(send, scope, error, [(b"retry-after", str(self._retry_after).encode())])


class BearerAuth:
    """Every request but the health probes (`is_open`) needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope):
            await self.app(scope, receive, send)
            return
        if not bearer_key_matches(scope["headers"], self._api_key):
            error = Unauthorized("missing or wrong API key: send one 'Authorization: Bearer <key>' header")
            await _send_error(send, scope, error, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class _BodyOverLimit(Exception):
    pass


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, whether or not Content-Length is given."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = BodyTooLarge(f"request body is larger than {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, scope, error, [])
            return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyOverLimit
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is over the limit, whatever the app answers (FastAPI turns the error into
            # a 400) is replaced by our 413.
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyOverLimit:
            pass
        if too_large:
            await _send_error(send, scope, error, [])
