"""The request being served: its id and where its time went, for response headers and log lines.

`RequestContext` (ASGI middleware, outermost) takes the client's `X-Request-Id` when it is safe to
log (bounded length, no spaces or control characters) or makes one, and keeps it and a
`RequestTiming` in context variables for the length of the request. Code on the request's path
(tasks and threads it starts copy the context) reads the id for log lines and adds what it timed.
Every response, errors included, carries `X-Request-Id` and, as text-embeddings-inference sends
them, `x-total-time` and `x-compute-time`, plus `x-tokenization-time`, `x-queue-time` and
`x-inference-time` when the request went through a scoring engine (whole milliseconds). It also
counts the requests this process is serving (`requests_in_progress`): a CPU engine gives every
core to a request whose front end has nothing else to do.
"""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Letters, digits and the punctuation of common id formats (UUIDs, W3C trace ids, base64, ARNs);
# nothing that could forge a log line or a header.
_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


@dataclass
class RequestTiming:
    """Where one request's time went. `started` is `time.perf_counter()` when it reached the app."""

    started: float
    tokenization_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    engine_calls: int = 0

    def headers(self, now: float) -> list[tuple[bytes, bytes]]:
        total = _ms(now - self.started)
        # TEI's x-compute-time is the request's whole time in the server, like x-total-time.
        headers = [(b"x-total-time", total), (b"x-compute-time", total)]
        if self.engine_calls:
            headers += [
                (b"x-tokenization-time", _ms(self.tokenization_s)),
                (b"x-queue-time", _ms(self.queue_s)),
                (b"x-inference-time", _ms(self.inference_s)),
            ]
        return headers


def _ms(seconds: float) -> bytes:
    return str(int(seconds * 1000)).encode()


_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_timing: ContextVar[RequestTiming | None] = ContextVar("request_timing", default=None)


# HTTP requests this process is serving now (one event loop per process: no lock needed).
_in_progress = 0


def requests_in_progress() -> int:
    """HTTP requests this process has taken and not yet answered, the caller's own included."""
    return _in_progress


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return _request_id.get()


def record_engine_call(tokenization_s: float, queue_s: float, inference_s: float) -> None:
    """Add one scoring-engine call's times to the current request's (nothing outside a request)."""
    timing = _timing.get()
    if timing is not None:
        timing.tokenization_s += tokenization_s
        timing.queue_s += queue_s
        timing.inference_s += inference_s
        timing.engine_calls += 1


def accepted_request_id(value: bytes | None) -> str | None:
    """The client's X-Request-Id if it is safe to log and send back, else None."""
    if value is None:
        return None
    text = value.decode("latin-1")
    return text if _SAFE_REQUEST_ID.fullmatch(text) else None


class RequestContext:
    """Sets the request id and timing for the request, and adds their headers to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        global _in_progress
        _in_progress += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            _in_progress -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
        request_id = accepted_request_id(given) or uuid.uuid4().hex
        timing = RequestTiming(time.perf_counter())
        # Not reset afterwards: the server runs each request in a task of its own, whose context
        # ends with it, and logs an exception that escaped the app after the app returns; the
        # id stays on that line too.
        _request_id.set(request_id)
        _timing.set(timing)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                    *timing.headers(time.perf_counter()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
