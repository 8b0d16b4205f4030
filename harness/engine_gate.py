"""A gate the test holds in front of the engine's forward pass, so that "the engine is busy" is an
event the test controls rather than a model sized to be slow on one machine.

The engine runs in its own process (`python -m reward_service.engine`), so the gate is a directory
the test and the engine both see: while `closed` exists in it, each forward waits before it runs,
and each one that waited appends a line to `held` first; with `pace`, each forward lasts at least
that long. The hook (`engine_gate_hook/
sitecustomize.py`) is installed in an engine by putting its folder on the engine's PYTHONPATH and
the directory in REWARD_TEST_ENGINE_GATE; an engine without that variable is untouched.

    gate = EngineGate(tmp_path / "gate").close()
    ... send a request; gate.wait_held(1)  # the engine is now inside that batch
    gate.open()                             # and finishes it
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

HOOK_DIR = Path(__file__).resolve().parent / "engine_gate_hook"
GATE_ENV = "REWARD_TEST_ENGINE_GATE"


class EngineGate:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def close(self) -> EngineGate:
        """Forwards that start from now on wait until `open`."""
        (self.directory / "closed").touch()
        return self

    def open(self) -> None:
        (self.directory / "closed").unlink(missing_ok=True)

    def pace(self, seconds: float) -> EngineGate:
        """Each forward from now on takes at least `seconds`, however fast the machine: a model
        slow on every machine, for tests that need work to outlast a deadline or grace period."""
        (self.directory / "pace").write_text(str(seconds))
        return self

    def held(self) -> int:
        """How many forwards have waited at the gate so far."""
        path = self.directory / "held"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_held(self, count: int, timeout_s: float = 60.0) -> None:
        """Until `count` forwards have reached the closed gate (each is then waiting there)."""
        deadline = time.monotonic() + timeout_s
        while self.held() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.held()} of {count} batches reached the engine gate")
            time.sleep(0.01)

    def environment(self) -> dict[str, str]:
        """Variables for a service started as a subprocess (its engines inherit them)."""
        checkout = HOOK_DIR.parents[1]  # replaces the PYTHONPATH `demo.run.start_service` would give
        return {GATE_ENV: str(self.directory), "PYTHONPATH": f"{HOOK_DIR}{os.pathsep}{checkout}"}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> EngineGate:
        """For an in-process service: its supervisor hands this process's sys.path and environment
        to the engines it starts."""
        monkeypatch.setenv(GATE_ENV, str(self.directory))
        monkeypatch.syspath_prepend(str(HOOK_DIR))
        return self


def items_sent(scorer: object) -> int:
    """Items the in-process front end has sent to `scorer`'s engines and not had answered: with the
    gate holding the engine, how the test knows its requests are in the engine's socket."""
    return sum(client.outstanding_items for client in scorer._engines.clients)  # type: ignore[attr-defined]


def wait_for_items_sent(scorer: object, count: int, timeout_s: float = 60.0) -> None:
    """Until exactly `count` items are outstanding (more as requests are sent, fewer as they are
    answered or cancelled)."""
    deadline = time.monotonic() + timeout_s
    while items_sent(scorer) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{items_sent(scorer)} items outstanding, not {count}")
        time.sleep(0.01)
