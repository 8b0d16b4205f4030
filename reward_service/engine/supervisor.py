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
one that has answered none `start_timeout_s` after its start (frozen or hung while it starts), or
one whose busy loop has been inside one step for `stall_timeout_s` (a batch hung on its device), is
SIGKILLed: its front ends see the socket close, answer its requests with 503 and report not ready,
and it is restarted like an engine that died.

With `standby` on, once every engine has loaded its model the supervisor also keeps one standby
process (`engine/standby.py`) that has imported PyTorch and transformers; a restart hands it the
dead engine's configuration instead of starting an interpreter, and a new standby is started once
the replacement is ready.
"""

from __future__ import annotations

import logging
import os
import select
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
from reward_service.engine.standby import PRELOADED

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.2
# An engine that was ready, or lived this long, is restarted at once; other deaths back off.
HEALTHY_LIFETIME_S = 30.0
MAX_BACKOFF_S = 30.0
# GNU OpenMP (torch's on Linux) keeps an op's threads spinning for about 10 ms after a parallel
# region ends (GOMP_SPINCOUNT's default of 300,000): after every CPU batch run on several threads,
# cores that the front end needs right then. 10,000 spins still bridge the gaps between a forward's
# ops (a lone 16-pair forward of the tiny stand-in on 2 threads: 6.2 ms against 5.9) and free the
# cores within 0.3 ms (docs/benchmarks.md). The operator's GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
ENGINE_SPIN_COUNT = "10000"


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
    # When the first beat since that answer was sent: silence is counted from a beat the engine
    # could have answered, so a watcher that was itself descheduled (a starved front end) and sent
    # nothing meanwhile does not take its own pause for the engine's.
    unanswered_since: float | None = None
    beat_sent: float = 0.0
    sequence: int = 0
    busy_s: float = 0.0
    # The process reported its model loaded (in a heartbeat reply).
    was_ready: bool = False


@dataclass
class EngineSupervisor:
    """Engines for `configs` (their `address` is filled in here), with metrics under `metrics_dir`.

    The heartbeat limits are REWARD_ENGINE_HEARTBEAT_INTERVAL_S, REWARD_ENGINE_HEARTBEAT_TIMEOUT_S,
    REWARD_ENGINE_STALL_TIMEOUT_S and REWARD_ENGINE_START_TIMEOUT_S (these defaults are theirs)."""

    scorer: str
    configs: list[EngineConfig]
    metrics_dir: str
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 3.0
    stall_timeout_s: float = 120.0
    start_timeout_s: float = 120.0
    standby: bool = False
    runtime_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="reward-engines-"))
    _engines: list[_Engine] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _zmq: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)
    _spare: subprocess.Popen[bytes] | None = None
    # A standby that died before it was needed is not replaced (it would only die again).
    _spare_failed: bool = False
    # It said it has imported everything (a hand-over before then still works, only slower).
    _spare_preloaded: bool = False

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

    def standby_pid(self) -> int | None:
        """The standby process waiting to replace an engine, once it has imported everything."""
        spare = self._spare
        if spare is None or not self._spare_preloaded or spare.poll() is not None:
            return None
        return spare.pid

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
        self._end_spare()
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

    def _environment(self) -> dict[str, str]:
        spin = {} if "OMP_WAIT_POLICY" in os.environ else {"GOMP_SPINCOUNT": ENGINE_SPIN_COUNT}
        return {
            **spin,
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            # The engine imports this package the way this process does (source tree or install).
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }

    def _spawn(self, engine: _Engine) -> None:
        config = msgspec.json.encode(engine.config)
        process = self._take_spare(config)
        how = "handed the standby engine"
        if process is None:
            command = [sys.executable, "-m", "reward_service.engine", config.decode()]
            process = subprocess.Popen(command, env=self._environment(), start_new_session=True)
            how = "started engine"
        with self._lock:
            engine.process = process
            engine.started = time.monotonic()
            engine.answered = engine.unanswered_since = None
            engine.busy_s = 0.0
            engine.was_ready = False
        log.info("%s pid %d for %s on %s", how, process.pid, self.scorer, engine.config.device)

    def _take_spare(self, config: bytes) -> subprocess.Popen[bytes] | None:
        """The standby process, now running as the engine of `config`; None if there is none alive."""
        spare, self._spare = self._spare, None
        self._spare_preloaded = False
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return None
        try:
            spare.stdin.write(config + b"\n")
            spare.stdin.close()
            if spare.stdout is not None:
                spare.stdout.close()
        except OSError:  # it died just now
            spare.kill()
            spare.wait()
            return None
        return spare

    def _keep_spare(self) -> None:
        """Start a standby once every engine has loaded its model (never while one loads: both
        would compete for the same cores), and notice one that died while waiting."""
        if not self.standby or self._spare_failed:
            return
        if self._spare is not None:
            if self._spare.poll() is not None:
                log.warning(
                    "standby engine pid %d for %s exited with code %s; restarts will start a new interpreter",
                    self._spare.pid,
                    self.scorer,
                    self._spare.returncode,
                )
                self._spare, self._spare_failed = None, True
            elif not self._spare_preloaded and self._spare.stdout is not None:
                if select.select([self._spare.stdout], [], [], 0)[0]:
                    self._spare_preloaded = self._spare.stdout.readline() == PRELOADED
            return
        if not all(e.was_ready and e.restart_at is None for e in self._engines):
            return
        command = [
            sys.executable,
            "-m",
            "reward_service.engine",
            "--standby",
            self._engines[0].config.model_path,
        ]
        self._spare = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._environment(),
            start_new_session=True,
        )
        log.info("started standby engine pid %d for %s", self._spare.pid, self.scorer)

    def _end_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if spare.stdin is not None:
            spare.stdin.close()  # end of file: it exits 0
        if spare.stdout is not None:
            spare.stdout.close()
        try:
            spare.wait(5.0)
        except subprocess.TimeoutExpired:
            spare.kill()
            spare.wait()

    def _watch(self) -> None:
        while not self._stopping.wait(CHECK_INTERVAL_S):
            for engine in self._engines:
                self._check(engine)
                self._check_heartbeat(engine)
            self._keep_spare()

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
                engine.unanswered_since = None
                engine.was_ready = engine.was_ready or reply.ready
        if engine.answered is None:
            # It may still be importing (seconds, more on a cold disk) and may not have bound its
            # socket, so no beat could reach it: its silence counts from its start, against the
            # start limit. Not until `was_ready`: an engine frozen just after it became ready,
            # before a reply said so, must not keep the long limit.
            silent_s = now - engine.started
            if silent_s > self.start_timeout_s:
                self._kill_frozen(engine, f"answered no heartbeat in the {silent_s:.1f}s since its start")
                return
        else:
            silent_s = 0.0 if engine.unanswered_since is None else now - engine.unanswered_since
            if silent_s > self.heartbeat_timeout_s:
                self._kill_frozen(engine, f"left a heartbeat unanswered for {silent_s:.1f}s")
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
                return  # not connected yet (the engine is starting): no beat to miss
            if engine.unanswered_since is None:
                engine.unanswered_since = now

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
        engine.answered = engine.unanswered_since = None

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
