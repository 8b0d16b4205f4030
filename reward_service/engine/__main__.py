"""`python -m reward_service.engine '<EngineConfig as JSON>'`: run one engine (the supervisor does)."""

from __future__ import annotations

import sys

import msgspec

from reward_service.engine.core import run_engine
from reward_service.engine.protocol import EngineConfig
from reward_service.logs import configure_logging

if __name__ == "__main__":
    config = msgspec.json.decode(sys.argv[1], type=EngineConfig)
    configure_logging(config.log_level, "json" if config.log_format == "json" else "text")
    run_engine(config)
