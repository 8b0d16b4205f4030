"""How long an engine restart takes, and where the time goes.

Starts an `EngineSupervisor` on a stand-in classifier, then SIGKILLs its engine `--kills` times
(waiting `--between-s` between kills, so the supervisor's back-off for engines that die young
shows as it would in production) and times each restart's phases:

- back-off: from the kill until the supervisor spawned the new process;
- start: until the new process answered a heartbeat (the interpreter started, imported PyTorch,
  transformers and the engine, bound its sockets);
- load: until it reported `ready` (the model loaded);
- plus, once, a bare `python -c "import reward_service.engine.core"` for the import alone.

With `--standby` (the service's default, REWARD_ENGINE_STANDBY) each kill waits until the
supervisor's standby process is up, so "start" is the hand-over to a process that has imported
everything already.

    python -m bench.bench_engine_restart --stand-in tiny --kills 3
    python -m bench.bench_engine_restart --stand-in tiny --kills 3 --standby
    python -m bench.bench_engine_restart --stand-in roberta-base --device cuda --kills 2

It also counts the engines the supervisor killed as frozen: any at all means a start or a load
kept the engine from answering its heartbeats (on a GPU, a step holding the GIL for seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

from bench.stand_ins import build_classifier
from reward_service.engine import protocol
from reward_service.engine.protocol import EngineConfig
from reward_service.engine.supervisor import EngineSupervisor


def _poll(condition: object, timeout_s: float = 120.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the engine did not come back")
        time.sleep(0.01)
    return time.monotonic()


class _Probe:
    """Heartbeats and status queries to one engine, as the supervisor and a front end send them."""

    def __init__(self, address: str) -> None:
        self._context = zmq.Context()
        self._address = address
        self._sequence = 0
        self._beat = self._status = None
        self.reconnect()

    def reconnect(self) -> None:
        for socket in (self._beat, self._status):
            if socket is not None:
                socket.close()
        self._beat = self._context.socket(zmq.DEALER)
        self._status = self._context.socket(zmq.DEALER)
        for socket in (self._beat, self._status):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IMMEDIATE, 1)
        self._beat.connect(protocol.heartbeat_address(self._address))
        self._status.connect(self._address)

    def answers_heartbeat(self, pid: int) -> bool:
        self._sequence += 1
        try:
            self._beat.send(protocol.encode(protocol.Heartbeat(self._sequence)), zmq.NOBLOCK)
        except zmq.Again:
            return False
        while self._beat.poll(50):
            if protocol.decode_heartbeat_reply(self._beat.recv()).pid == pid:
                return True
        return False

    def ready(self, pid: int) -> bool:
        self._sequence += 1
        try:
            self._status.send(protocol.encode(protocol.StatusQuery(self._sequence)), zmq.NOBLOCK)
        except zmq.Again:
            return False
        while self._status.poll(50):
            answer = protocol.decode_from_engine(self._status.recv())
            if isinstance(answer, protocol.EngineStatus) and answer.pid == pid and answer.state == "ready":
                return True
        return False

    def close(self) -> None:
        self.reconnect()
        for socket in (self._beat, self._status):
            socket.close()
        self._context.term()


class _FrozenKills(logging.Handler):
    """Counts the supervisor's log lines for an engine it kills as frozen."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "killing it to restart it" in record.getMessage():
            self.count += 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stand-in", default="tiny", choices=["tiny", "deep-narrow", "roberta-base"])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--between-s", type=float, default=1.0, help="wait after ready before the next kill")
    parser.add_argument("--standby", action="store_true", help="keep a standby engine, as the service does")
    parser.add_argument("--device", default="cpu", help="the engine's device: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()

    model = build_classifier(args.stand_in)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import reward_service.engine.core"], check=True)
    import_s = time.monotonic() - started

    frozen_kills = _FrozenKills()
    logging.getLogger("reward_service.engine.supervisor").addHandler(frozen_kills)
    config = EngineConfig(
        "bench", "", str(model), args.device, "auto", 16384, 256, 2.0, 4096, log_level="warning"
    )
    supervisor = EngineSupervisor(
        "bench", [config], tempfile.mkdtemp(prefix="bench-metrics-"), standby=args.standby
    )
    supervisor.start()
    [address] = supervisor.addresses
    probe = _Probe(address)
    phases: list[tuple[float, float, float]] = []
    try:
        [pid] = supervisor.pids()
        _poll(lambda: probe.ready(pid))
        for _ in range(args.kills):
            time.sleep(args.between_s)
            if args.standby:
                _poll(lambda: supervisor.standby_pid() is not None)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            spawned = _poll(lambda old=pid: supervisor.pids()[0] not in (None, old))
            [pid] = supervisor.pids()
            probe.reconnect()
            answered = _poll(lambda new=pid: probe.answers_heartbeat(new))
            ready = _poll(lambda new=pid: probe.ready(new))
            phases.append((spawned - killed, answered - spawned, ready - answered))
    finally:
        probe.close()
        supervisor.stop()

    print(f"standby engine: {'yes' if args.standby else 'no'}")
    print(f"stand-in {args.stand_in} on {args.device}; bare import of the engine: {import_s:.2f} s")
    print(f"engines killed by the supervisor as frozen: {frozen_kills.count}")
    print("restart  back-off_s  start_s  load_s  total_s")
    for index, (backoff, start, load) in enumerate(phases, 1):
        print(f"{index:7d}  {backoff:10.2f}  {start:7.2f}  {load:6.2f}  {backoff + start + load:7.2f}")
    totals = [sum(p) for p in phases]
    print(f"median total {statistics.median(totals):.2f} s")


if __name__ == "__main__":
    main()
