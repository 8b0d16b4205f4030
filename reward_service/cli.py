"""`reward-service` command: run the service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import uvicorn

from reward_service.app import create_app
from reward_service.settings import ServiceSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="reward-service",
        description="Serve reward models over HTTP. Everything else is configured with REWARD_* "
        "environment variables (see README).",
    )
    parser.add_argument("--host", help="interface to bind (default: REWARD_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (default: REWARD_PORT or 8000)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = ServiceSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal once it has
    # restored the previous handlers; this handler turns that into a clean exit status 0, which is
    # what orchestrators expect from a graceful stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )


if __name__ == "__main__":
    main()
