"""`python -m reward_service.engine '<EngineConfig as JSON>'`: run one engine (the supervisor does)."""

from __future__ import annotations

import logging
import os
import sys

import msgspec

from reward_service.engine.core import run_engine
from reward_service.engine.protocol import EngineConfig

if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("REWARD_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s",
    )
    run_engine(msgspec.json.decode(sys.argv[1], type=EngineConfig))
