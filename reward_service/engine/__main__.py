"""`python -m reward_service.engine '<EngineConfig as JSON>'`: run one engine (the supervisor does)."""

from __future__ import annotations

import os
import sys

import msgspec

from reward_service.engine.core import run_engine
from reward_service.engine.protocol import EngineConfig
from reward_service.logs import configure_logging

if __name__ == "__main__":
    # The supervisor passes the service's log settings, so engine lines look like the front end's.
    log_format = "json" if os.environ.get("REWARD_LOG_FORMAT") == "json" else "text"
    configure_logging(os.environ.get("REWARD_LOG_LEVEL", "info"), log_format)
    run_engine(msgspec.json.decode(sys.argv[1], type=EngineConfig))
