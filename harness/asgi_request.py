"""A Starlette `Request` for a bare ASGI scope, for tests of body decoding without a server."""

from __future__ import annotations

from starlette.requests import Request


def request_with(body: bytes, path: str = "/score") -> Request:
    """A JSON POST to `path` whose whole body is `body`, delivered in one message."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
    }
    return Request(scope, receive)
