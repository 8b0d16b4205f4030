"""`reward-service` command: the engines, and the uvicorn front end(s) that feed them.

With one front-end worker (the default) the app starts its engines itself, exactly as tests and
the demo run it. With `--workers N`, this process starts the engines first, then N uvicorn worker
processes that attach to them, and stops the engines once the workers have drained.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

import uvicorn

from reward_service.app import create_app, default_scorer_error
from reward_service.connections import PROTOCOL_PATH, raise_open_file_limit
from reward_service.engine.supervisor import EngineSupervisor
from reward_service.metrics import MULTIPROCESS_ENV, ServiceMetrics
from reward_service.scorers import build_registry
from reward_service.scorers.roberta import engine_configs
from reward_service.settings import ServiceSettings

CLASSIFIER_SCORER = "roberta-hate"
log = logging.getLogger("reward_service")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="reward-service",
        description="Serve reward models over HTTP. Everything else is configured with REWARD_* "
        "environment variables (see README).",
    )
    parser.add_argument("--host", help="interface to bind (default: REWARD_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (default: REWARD_PORT or 8000)")
    parser.add_argument("--workers", type=int, help="front-end processes (default: REWARD_WORKERS or 1)")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "workers": args.workers}.items()
        if v is not None
    }
    settings = ServiceSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fatal: list[str] = []

    def stop_for_good(reason: str) -> None:
        log.critical("%s; exiting", reason)
        fatal.append(reason)
        os.kill(os.getpid(), signal.SIGTERM)

    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal once it has
    # restored the previous handlers; this handler turns that into exit status 0 for a graceful
    # stop (what orchestrators expect), or 1 when the default scorer could not load.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1 if fatal else 0))
    # Children (engines, workers) inherit the raised limit; REWARD_MAX_CONNECTIONS is checked against it.
    raise_open_file_limit()
    options = {
        "http": PROTOCOL_PATH,
        "timeout_keep_alive": settings.keep_alive_s,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, on_fatal=stop_for_good), **options)
        sys.exit(1 if fatal else 0)
    _run_workers(settings, options)


def _run_workers(settings: ServiceSettings, options: dict[str, object]) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="reward-metrics-")
    supervisor = None
    if CLASSIFIER_SCORER in settings.scorers:
        supervisor = EngineSupervisor(
            CLASSIFIER_SCORER, engine_configs(CLASSIFIER_SCORER, settings), metrics_dir, settings.log_level
        )
        supervisor.start()
        settings = settings.model_copy(update={"engine_addresses": supervisor.addresses})
        os.environ["REWARD_ENGINE_ADDRESSES"] = ",".join(supervisor.addresses)
    try:
        # Workers would each report a broken default scorer only in /readyz; find out here, once,
        # and exit with the reason before any of them starts.
        if reason := asyncio.run(_default_scorer_error(settings)):
            log.critical("%s; exiting", reason)
            sys.exit(1)
        # Set before any worker starts, so that every process writes its figures where /metrics reads.
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        uvicorn.run("reward_service.app:create_app", factory=True, workers=settings.workers, **options)
    finally:
        if supervisor is not None:
            supervisor.stop(settings.graceful_shutdown_s)
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _default_scorer_error(settings: ServiceSettings) -> str | None:
    registry = build_registry(settings, ServiceMetrics())
    try:
        await registry.start()
        return await default_scorer_error(registry)
    finally:
        await registry.close()


if __name__ == "__main__":
    main()
