"""EngineSupervisor: starts one engine process per device, restarts one that dies or freezes, stops
them all.

Engines run in their own session, so a Ctrl-C meant for the server does not stop them before the
front end has drained; they exit on their own if the supervising process disappears. A watcher
thread, asleep between checks, restarts a dead engine on the same socket path (front ends
reconnect by themselves): at once if it had loaded its model (a crash, the OOM killer, a freeze),
else after a back-off that grows while it keeps dying before it is ready (a model that cannot
load), as it does for one that dies within HEALTHY_LIFETIME_S of its start.

The same thread sends each engine a heartbeat every `heartbeat_interval_s`. An engine that has
answered once and then leaves heartbeats unanswered for `heartbeat_timeout_s` (stopped, or frozen),
or whose busy loop has been inside one step for `stall_timeout_s` (a batch hung on its device), is
SIGKILLed: its front ends see the socket close, answer its requests with 503 and report not ready,
and it is restarted like an engine that died.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import msgspec
import zmq
from prometheus_client import multiprocess

from reward_service.engine import protocol
from reward_service.engine.protocol import EngineConfig

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.2
# An engine that was ready, or lived this long, is restarted at once; other deaths back off.
HEALTHY_LIFETIME_S = 30.0
MAX_BACKOFF_S = 30.0


@dataclass
class _Engine:
    config: EngineConfig
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    heartbeat: zmq.Socket[bytes] | None = None
    # When this process last answered a heartbeat; None until it has answered once.
    answered: float | None = None
    beat_sent: float = 0.0
    sequence: int = 0
    busy_s: float = 0.0
    # The process reported its model loaded (in a heartbeat reply).
    was_ready: bool = False


@dataclass
class EngineSupervisor:
    """Engines for `configs` (their `address` is filled in here), with metrics under `metrics_dir`.

    The heartbeat limits are REWARD_ENGINE_HEARTBEAT_INTERVAL_S, REWARD_ENGINE_HEARTBEAT_TIMEOUT_S and
    REWARD_ENGINE_STALL_TIMEOUT_S (these defaults are theirs)."""

    scorer: str
    configs: list[EngineConfig]
    metrics_dir: str
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 3.0
    stall_timeout_s: float = 120.0
    runtime_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="reward-engines-"))
    _engines: list[_Engine] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _zmq: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)

    def __post_init__(self) -> None:
        self._engines = [
            _Engine(msgspec.structs.replace(config, address=self._address(i)))
            for i, config in enumerate(self.configs)
        ]

    def _address(self, index: int) -> str:
        return f"ipc://{self.runtime_dir}/{self.scorer}-{index}.sock"

    @property
    def addresses(self) -> list[str]:
        return [engine.config.address for engine in self._engines]

    def pids(self) -> list[int | None]:
        with self._lock:
            return [e.process.pid if e.process and e.process.poll() is None else None for e in self._engines]

    def restarts(self) -> int:
        return sum(engine.restarts for engine in self._engines)

    def start(self) -> None:
        for engine in self._engines:
            self._spawn(engine)
        self._watcher = threading.Thread(target=self._watch, name=f"supervise-{self.scorer}", daemon=True)
        self._watcher.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every engine (each finishes its queued work), then wait; SIGKILL after `timeout_s`."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        for engine in self._engines:
            if engine.heartbeat is not None:
                engine.heartbeat.close()
        self._zmq.term()
        processes = [e.process for e in self._engines if e.process is not None and e.process.poll() is None]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("engine pid %d did not stop in %.0fs; killing it", process.pid, timeout_s)
                process.kill()
                process.wait()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def _spawn(self, engine: _Engine) -> None:
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            # The engine imports this package the way this process does (source tree or install).
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        command = [sys.executable, "-m", "reward_service.engine", msgspec.json.encode(engine.config).decode()]
        with self._lock:
            engine.process = subprocess.Popen(command, env=env, start_new_session=True)
            engine.started = time.monotonic()
            engine.answered = None
            engine.busy_s = 0.0
            engine.was_ready = False
        log.info("started engine pid %d for %s on %s", engine.process.pid, self.scorer, engine.config.device)

    def _watch(self) -> None:
        while not self._stopping.wait(CHECK_INTERVAL_S):
            for engine in self._engines:
                self._check(engine)
                self._check_heartbeat(engine)

    def _check_heartbeat(self, engine: _Engine) -> None:
        process = engine.process
        if process is None or process.poll() is not None or engine.restart_at is not None:
            return
        if engine.heartbeat is None:
            engine.heartbeat = self._zmq.socket(zmq.DEALER)
            engine.heartbeat.setsockopt(zmq.LINGER, 0)
            # Beats are sent only over a live connection, not queued for an engine still starting.
            engine.heartbeat.setsockopt(zmq.IMMEDIATE, 1)
            engine.heartbeat.connect(protocol.heartbeat_address(engine.config.address))
        now = time.monotonic()
        while engine.heartbeat.poll(0):
            try:
                reply = protocol.decode_heartbeat_reply(engine.heartbeat.recv())
            except Exception:  # noqa: BLE001 - a malformed frame is no sign of life
                continue
            if reply.pid == process.pid:  # not a late reply of the engine this one replaced
                engine.answered, engine.busy_s = now, reply.busy_s
                engine.was_ready = engine.was_ready or reply.ready
        if engine.answered is not None:
            silent_s = now - engine.answered
            if silent_s > self.heartbeat_timeout_s:
                self._kill_frozen(engine, f"answered no heartbeat for {silent_s:.1f}s")
                return
            if engine.busy_s > self.stall_timeout_s:
                self._kill_frozen(engine, f"has been inside one step of its loop for {engine.busy_s:.0f}s")
                return
        if now - engine.beat_sent >= self.heartbeat_interval_s:
            engine.sequence += 1
            engine.beat_sent = now
            try:
                engine.heartbeat.send(protocol.encode(protocol.Heartbeat(engine.sequence)), zmq.NOBLOCK)
            except zmq.Again:
                pass  # not connected yet (the engine is starting): no beat to miss

    def _kill_frozen(self, engine: _Engine, why: str) -> None:
        assert engine.process is not None
        log.error(
            "engine pid %d for %s on %s %s; killing it to restart it",
            engine.process.pid,
            self.scorer,
            engine.config.device,
            why,
        )
        engine.process.kill()  # SIGKILL: it ends a stopped process too
        engine.process.wait()
        engine.answered = None

    def _check(self, engine: _Engine) -> None:
        now = time.monotonic()
        if engine.restart_at is not None:
            if now >= engine.restart_at:
                engine.restart_at = None
                engine.restarts += 1
                self._spawn(engine)
            return
        process = engine.process
        if process is None or process.poll() is None:
            return
        multiprocess.mark_process_dead(process.pid, self.metrics_dir)
        lived = now - engine.started
        healthy = engine.was_ready or lived > HEALTHY_LIFETIME_S
        engine.backoff_s = 0.0 if healthy else min(MAX_BACKOFF_S, max(1.0, 2 * engine.backoff_s))
        log.error(
            "engine pid %d for %s on %s exited with code %s after %.1fs; restarting in %.0fs",
            process.pid,
            self.scorer,
            engine.config.device,
            process.returncode,
            lived,
            engine.backoff_s,
        )
        engine.restart_at = now + engine.backoff_s
