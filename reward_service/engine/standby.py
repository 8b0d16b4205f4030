"""A standby engine: a process that has done an engine's slow start (the interpreter, PyTorch,
transformers, the model's architecture module) ahead of time and waits for the configuration of
the engine it is to become.

On a CPU, importing PyTorch and transformers is most of an engine restart (about 6 of 10 s on the
2-core sandbox, see docs/benchmarks.md "Engine restart"); the model's weights are read in
milliseconds to a few seconds. The supervisor keeps one standby per scorer once its engines are
ready, and hands it the configuration of an engine that died, so the replacement only loads the
weights. Nothing here touches CUDA: the device is chosen after the hand-over, as in a fresh engine.

The standby writes one line (`PRELOADED`) to its stdout once it has imported everything; the
hand-over is one line of JSON (an `EngineConfig`) on its stdin; end of file without one means it is
not needed and it exits 0.
"""

from __future__ import annotations

import logging
import os
import sys

import msgspec

from reward_service.engine.protocol import EngineConfig

log = logging.getLogger(__name__)

PRELOADED = b"preloaded\n"


def preload_architecture(model_path: str) -> None:
    """Import the modules that loading `model_path` will need, so the load after the hand-over
    does not. Failing here is harmless: the real load reports the problem."""
    try:
        from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING, AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]  # imports the modeling module
    except Exception:  # noqa: BLE001 - only a head start; the engine's own load says what is wrong
        log.debug("standby could not preload %s", model_path, exc_info=True)


def wait_for_config(model_path: str) -> EngineConfig | None:
    """Preload for `model_path` (the engine's own modules are imported by then: `__main__` imports
    them first), then block until the supervisor sends a configuration (None: it
    closed stdin without one)."""
    preload_architecture(model_path)
    try:
        sys.stdout.buffer.write(PRELOADED)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The supervisor stopped (the service shut down) before the standby was ready: not needed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return None
    line = sys.stdin.readline()
    if not line.strip():
        return None
    # stdout was the pipe to the supervisor, which reads no more of it: a full pipe would block the
    # engine. Its output goes where its logs go.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return msgspec.json.decode(line, type=EngineConfig)
