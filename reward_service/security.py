"""ASGI middleware: bearer-token auth and a request body size limit."""

from __future__ import annotations

import asyncio
import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.settings import ServiceSettings

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
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


def bearer_key_matches(authorization: bytes, api_key: str) -> bool:
    """`authorization` is `Bearer <api_key>`. Constant-time comparison, so the key cannot be
    guessed byte by byte from response times."""
    return hmac.compare_digest(authorization, f"Bearer {api_key}".encode())


def has_api_key(authorization: str | None, settings: ServiceSettings) -> bool:
    """True when no key is configured, or `authorization` carries it."""
    if settings.api_key is None:
        return True
    # Starlette decodes header values as latin-1; this gives back the bytes the client sent.
    return bearer_key_matches((authorization or "").encode("latin-1"), settings.api_key.get_secret_value())


class ShutdownGuard:
    """A request still running when the shutdown grace period ends is cancelled by the server;
    answer it with 503 + Retry-After (retry elsewhere) instead of a bare 500."""

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self._retry_after = str(retry_after_s).encode()

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
            await _send_json(
                send,
                503,
                "the server is shutting down; retry (on another replica)",
                [(b"retry-after", self._retry_after)],
            )


class BearerAuth:
    """Every path but the health probes needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not bearer_key_matches(given, self._api_key):
            await _send_json(
                send,
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
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
        detail = f"request body is larger than {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, detail, [])
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
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is over the limit, whatever the app answers (FastAPI turns the error into
            # a 400) is replaced by our 413.
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if too_large:
            await _send_json(send, 413, detail, [])
