"""Run an ASGI app with uvicorn on a loopback port in a background thread, for real-HTTP tests.

The service's app is served with its connection protocol (header and body timeouts, header size
and connection bounds, from the app's settings), as `reward-service` serves it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from starlette.types import ASGIApp

from reward_service.connections import protocol_class


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, app: ASGIApp, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = getattr(getattr(app, "state", None), "settings", None)
        http = protocol_class(settings) if settings is not None else "auto"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", http=http
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, ready_path: str | None = "/readyz", timeout_s: float = 60.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        if ready_path:
            while not self._answers_200(ready_path):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready_path} never answered 200")
                time.sleep(0.05)
        return self

    def _answers_200(self, path: str) -> bool:
        # A probe slower than its timeout on a loaded machine is a "not yet", not a failed start.
        try:
            return httpx.get(self.url + path, timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def serving(
    app: ASGIApp, ready_path: str | None = "/readyz", port: int | None = None, timeout_s: float = 60.0
) -> Iterator[LiveServer]:
    server = LiveServer(app, port).start(ready_path, timeout_s)
    try:
        yield server
    finally:
        server.stop()
