"""One log format for uvicorn, the app and the libraries, each line once, with the request id.

Each case runs in a fresh interpreter: configuring logging changes process-wide state."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from demo.run import ROOT

# Lines from every source the service has: uvicorn, the app inside a request, the libraries that
# install handlers of their own (transformers, huggingface_hub), and Python warnings.
EMIT = """
import asyncio, logging, sys, warnings
from reward_service.logs import configure_logging
from reward_service.request_context import RequestContext

# Imported first, as in an engine process (a front end never imports transformers).
from huggingface_hub.utils import logging as hub_logging
from transformers.utils import logging as transformers_logging

configure_logging("info", sys.argv[1])

logging.getLogger("uvicorn.error").info("uvicorn line")
hub_logging.get_logger("huggingface_hub.file_download").warning("hub line")
transformers_logging.get_logger("transformers.modeling_utils").warning("transformers line")
warnings.warn("python warning line")

async def app(scope, receive, send):
    logging.getLogger("reward_service.routes").warning("app line")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

async def noop(message):
    pass

scope = {"type": "http", "headers": [(b"x-request-id", b"req-9")]}
asyncio.run(RequestContext(app)(scope, None, noop))
"""
MESSAGES = ("uvicorn line", "hub line", "transformers line", "python warning line", "app line")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) [\w.]+( \[req-9\])?: .+")


def emitted(log_format: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", EMIT, log_format],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_source_logs_once_in_the_one_format(log_format: str) -> None:
    lines = emitted(log_format)
    for message in MESSAGES:
        assert sum(message in line for line in lines) == 1, (message, lines)
    if log_format == "text":
        # A multi-line message (a traceback, a warning's source line) continues on indented lines.
        assert all(TEXT_LINE.fullmatch(line) or not line[:1].strip() for line in lines), lines
        [app_line] = [line for line in lines if "app line" in line]
        assert " reward_service.routes [req-9]: app line" in app_line
        return
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)
    by_message = {r["message"].splitlines()[0]: r for r in records}
    assert by_message["app line"]["request_id"] == "req-9"
    assert by_message["hub line"]["logger"] == "huggingface_hub.file_download"
    assert by_message["transformers line"]["level"] == "WARNING"
    assert all("request_id" not in r for r in records if r["message"] != "app line")
