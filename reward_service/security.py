"""ASGI middleware: bearer-token auth, a request body size limit, and 503 for requests cut short by
shutdown; each answers in the error shape of the protocol whose route was asked for."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.errors import BodyTooLarge, ServiceError, ShuttingDown, Unauthorized
from reward_service.protocols import error_body_for
from reward_service.settings import ServiceSettings

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


async def _send_error(
    send: Send, scope: Scope, error: ServiceError, headers: list[tuple[bytes, bytes]]
) -> None:
    """`error` as JSON, in the shape of the protocol whose route was asked for."""
    body = json.dumps(error_body_for(scope.get("path", ""), error)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bearer_key_matches(headers: Sequence[tuple[bytes, bytes]], api_key: str) -> bool:
    """Exactly one `Authorization` header, `Bearer <api_key>` (the scheme in any case, RFC 9110
    11.1). Two headers never match, whichever holds the key: a proxy and the client disagree on who
    is asking. Constant-time comparison, so the key cannot be guessed byte by byte from response times."""
    given = [value for name, value in headers if name.lower() == b"authorization"]
    if len(given) != 1:
        return False
    scheme, _, token = given[0].strip().partition(b" ")
    # Compare even when the scheme is wrong, so that timing does not tell which part was.
    matches = hmac.compare_digest(token.strip(), api_key.encode())
    return matches and scheme.lower() == b"bearer"


def has_api_key(headers: Sequence[tuple[bytes, bytes]], settings: ServiceSettings) -> bool:
    """True when no key is configured, or `headers` (raw ASGI headers) carry it."""
    if settings.api_key is None:
        return True
    return bearer_key_matches(headers, settings.api_key.get_secret_value())


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
    """Every path but the health probes needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
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
