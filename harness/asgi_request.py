"""A Starlette `Request` for a bare ASGI scope, for tests of body decoding without a server."""

from __future__ import annotations

from starlette.requests import Request


def request_with(body: bytes, path: str = "/score", chunk_bytes: int | None = None) -> Request:
    """A JSON POST to `path` whose body is `body`, delivered in one message or, with `chunk_bytes`,
    in messages of that many bytes, as a server passes on a body that arrives in pieces."""
    size = chunk_bytes or max(1, len(body))
    chunks = [body[start : start + size] for start in range(0, len(body), size)] or [b""]

    async def receive() -> dict[str, object]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
    }
    return Request(scope, receive)
