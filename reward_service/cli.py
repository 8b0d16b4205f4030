"""`reward-service` command: the engines, and the uvicorn front end(s) that feed them.

The settings are read once, here (flags, REWARD_* variables, .env). With one front-end worker (the
default) the app gets them as an argument and starts its engines itself, exactly as tests and the
demo run it. With `--workers N`, this process starts the engines first, then N uvicorn worker
processes that attach to them; the workers read the settings this process serialized into
`SETTINGS_ENV` (engine sockets included), and the engines are stopped once the workers have drained.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliSettingsSource, SettingsError

from reward_service import __version__
from reward_service.app import create_app, default_scorer_error
from reward_service.connections import WORKER_PROTOCOL_PATH, protocol_class, raise_open_file_limit
from reward_service.engine.pool import EngineProcesses, engine_scorers
from reward_service.logs import log_config
from reward_service.metrics import MULTIPROCESS_ENV, ServiceMetrics
from reward_service.scorers import build_registry
from reward_service.settings import SETTINGS_ENV, ServiceSettings

log = logging.getLogger("reward_service")


def parse_settings(argv: list[str] | None = None) -> ServiceSettings:
    """Settings from flags, else REWARD_* variables, else `.env`, else defaults.

    Every setting is a flag generated from its field (`--max-batch-tokens` for
    REWARD_MAX_BATCH_TOKENS); `--help` lists them with defaults and variables. `--help`,
    `--version` and bad flags exit here; invalid values exit with status 2 and pydantic's reasons.
    """
    parser = argparse.ArgumentParser(
        prog="reward-service",
        description="Serve reward models over HTTP. Every setting is a flag or a REWARD_* environment "
        "variable (also read from .env); a flag wins over the variable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--json-logs",
        dest="log_format",
        action="store_const",
        const="json",
        help="Same as --log-format json.",
    )
    flags = CliSettingsSource(
        ServiceSettings,
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_show_env_vars=True,
        cli_hide_none_type=True,
        # The classifier's model under the names other servers use for it (TEI: --model-id).
        cli_shortcuts={"roberta-model": ["model", "model-id"]},
    )
    args = sys.argv[1:] if argv is None else argv
    try:
        return ServiceSettings(_cli_settings_source=flags(args=args))
    except (ValidationError, SettingsError) as exc:
        parser.exit(
            2, f"{parser.prog}: invalid settings (flags, REWARD_* variables or .env): {_reasons(exc)}\n"
        )


def _reasons(exc: ValidationError | SettingsError) -> str:
    """One line: each bad setting by its flag and variable, with pydantic's reason (its own text
    spans lines and links to its docs)."""
    if isinstance(exc, SettingsError):
        # A value the source could not decode (not JSON where JSON is needed): the decoder says where.
        return f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
    reasons = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"--{field.replace('_', '-')} / REWARD_{field.upper()}: " if field else ""
        # The value given, but never the key's, and not the whole input of a check across settings.
        given = "" if not field or field == "api_key" else f", not {error['input']!r}"
        reasons.append(name + error["msg"].removeprefix("Value error, ") + given)
    return "; ".join(reasons)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging_config = log_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(logging_config)
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
        "timeout_keep_alive": settings.keep_alive_s,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # uvicorn applies it in every worker process, so its own lines share the app's format.
        "log_config": logging_config,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
    }
    if settings.workers == 1:
        app = create_app(settings, on_fatal=stop_for_good)
        uvicorn.run(app, http=protocol_class(settings), **options)
        sys.exit(1 if fatal else 0)
    _run_workers(settings, options)


def _run_workers(settings: ServiceSettings, options: dict[str, object]) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="reward-metrics-")
    engines = None
    if engine_scorers(settings):
        engines = EngineProcesses(settings, metrics_dir)
        engines.start()
        settings = settings.model_copy(update={"engine_addresses": engines.addresses})
    try:
        # Workers would each report a broken default scorer only in /readyz; find out here, once,
        # and exit with the reason before any of them starts.
        if reason := asyncio.run(_default_scorer_error(settings)):
            log.critical("%s; exiting", reason)
            sys.exit(1)
        # Set before any worker starts, so that every process writes its figures where /metrics reads.
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        os.environ[SETTINGS_ENV] = settings.serialize()
        uvicorn.run(
            "reward_service.app:worker_app",
            factory=True,
            workers=settings.workers,
            http=WORKER_PROTOCOL_PATH,
            **options,
        )
    finally:
        if engines is not None:
            engines.stop(settings.graceful_shutdown_s)
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
