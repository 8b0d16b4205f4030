"""Run one engine (the supervisor does):

python -m reward_service.engine '<EngineConfig as JSON>'
python -m reward_service.engine --standby MODEL_PATH     # then the EngineConfig on stdin
"""

from __future__ import annotations

import sys

import msgspec

from reward_service.engine.core import run_engine
from reward_service.engine.protocol import EngineConfig
from reward_service.engine.standby import wait_for_config
from reward_service.logs import configure_logging

if __name__ == "__main__":
    if sys.argv[1] == "--standby":
        config = wait_for_config(sys.argv[2])
        if config is None:
            sys.exit(0)
    else:
        config = msgspec.json.decode(sys.argv[1], type=EngineConfig)
    configure_logging(config.log_level, "json" if config.log_format == "json" else "text")
    run_engine(config)
