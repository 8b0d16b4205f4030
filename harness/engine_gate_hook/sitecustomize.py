"""Imported by Python at start-up in any process with this folder on its PYTHONPATH (see
`harness/engine_gate.py`); it wraps the engine's forward only where REWARD_TEST_ENGINE_GATE is set."""

from __future__ import annotations

import os

_gate = os.environ.get("REWARD_TEST_ENGINE_GATE")

if _gate:
    import time
    from pathlib import Path

    from reward_service.engine.model_runner import ModelRunner

    _closed, _held, _pace = Path(_gate) / "closed", Path(_gate) / "held", Path(_gate) / "pace"
    _launch = ModelRunner.launch

    def _gated_launch(self, sequences):  # type: ignore[no-untyped-def]
        if _closed.exists():
            with _held.open("a") as held:
                held.write(f"{len(sequences)}\n")
            while _closed.exists():
                time.sleep(0.005)  # sleeping releases the GIL, as PyTorch's ops do
        started = time.monotonic()
        launched = _launch(self, sequences)
        if _pace.exists():
            time.sleep(max(0.0, started + float(_pace.read_text()) - time.monotonic()))
        return launched

    ModelRunner.launch = _gated_launch
