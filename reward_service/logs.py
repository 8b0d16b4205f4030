"""Logging: one format for every line the service writes (uvicorn's, the app's, the engines' and the
libraries'), as text or as one JSON object per line, with the id of the request being served.

`log_config` is a `logging.config.dictConfig` dictionary. `reward-service` applies it itself and
hands it to uvicorn as `log_config`, so uvicorn applies it again in every `--workers N` process; the
engine processes apply it at start. uvicorn's loggers get no handler of their own: their records
propagate to the root handler like everyone else's.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from reward_service.request_context import current_request_id

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (None outside a request) and `request_tag` (" [id]" or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, request_id when
    known, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def stderr_handler(log_format: LogFormat) -> logging.Handler:
    """The one handler of the process (dictConfig calls this in every process that applies the config).

    Python warnings go through logging too.
    """
    if "transformers" in sys.modules:  # an engine process; a front end never imports it
        _route_transformers_logging(log_format)
    logging.captureWarnings(True)
    return logging.StreamHandler(sys.stderr)


def _route_transformers_logging(log_format: LogFormat) -> None:
    """transformers and huggingface_hub install stderr handlers of their own (transformers also
    stops propagation, huggingface_hub does not: its warnings appeared twice, once unformatted).
    They are taken away, so that library records reach the root handler once. Progress bars are not
    log lines, so JSON output has none."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    hub_logger = hub_logging.get_logger()
    for handler in list(hub_logger.handlers):
        hub_logger.removeHandler(handler)
    if log_format == "json":
        transformers_logging.disable_progress_bar()
        disable_progress_bars()


def log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The dictConfig of the service: root handler on stderr, uvicorn's loggers propagating to it."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"service": formatter},
        "handlers": {
            "stderr": {
                "()": f"{__name__}.stderr_handler",
                "log_format": log_format,
                "formatter": "service",
                "filters": ["request_id"],
            }
        },
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


def configure_logging(level: str, log_format: LogFormat) -> None:
    logging.config.dictConfig(log_config(level, log_format))
