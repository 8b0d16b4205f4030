"""A CPU engine leaves a core to the front end, except for a lone request whose front end waits on
it; a GPU engine and an operator's OMP_NUM_THREADS are left alone."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from reward_service.engine.core import CpuThreads, cpu_threads, front_end_waits
from reward_service.engine.protocol import EngineConfig
from reward_service.engine.scheduler import QueuedRequest
from reward_service.engine.supervisor import ENGINE_SPIN_COUNT, EngineSupervisor


def config(device: str) -> EngineConfig:
    return EngineConfig(
        scorer="s",
        address="ipc:///tmp/x.sock",
        model_path="m",
        device=device,
        dtype="auto",
        max_batch_tokens=1024,
        max_batch_items=8,
        max_wait_ms=0,
        queue_capacity=16,
    )


def test_a_cpu_engine_takes_every_core_but_one_and_every_core_when_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(config("cpu")) == CpuThreads(shared=max(1, cores - 1), alone=cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert cpu_threads(config("cpu")) == CpuThreads(shared=1, alone=1)


def test_omp_num_threads_and_gpus_are_left_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_threads(config("cpu")) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(config("cuda:0")) is None


def request(request_id: int, sender_idle: bool) -> QueuedRequest:
    return QueuedRequest(b"c", request_id, np.arange(3, dtype=np.int32), [3], sender_idle=sender_idle)


def test_only_a_lone_request_from_an_idle_front_end_gets_every_core() -> None:
    assert front_end_waits([request(1, sender_idle=True)])
    assert not front_end_waits([request(1, sender_idle=False)])
    # Two idle senders are two front-end processes: one may be parsing its next request.
    assert not front_end_waits([request(1, sender_idle=True), request(2, sender_idle=True)])
    assert not front_end_waits([])


def test_engines_spin_briefly_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    supervisor = EngineSupervisor("s", [], str(tmp_path), runtime_dir=str(tmp_path))
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert supervisor._environment()["GOMP_SPINCOUNT"] == ENGINE_SPIN_COUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert supervisor._environment()["GOMP_SPINCOUNT"] == "5"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert "GOMP_SPINCOUNT" not in supervisor._environment()


def cpu_batches(url: str) -> dict[str, float]:
    counts = {"all": 0.0, "all_but_one": 0.0}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("reward_cpu_batches_total{"):
            cores = line.split('cores="')[1].split('"')[0]
            counts[cores] += float(line.split()[-1])
    return counts


def test_a_lone_request_runs_on_every_core_and_one_beside_another_leaves_the_front_end_a_core(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo import run as demo_run
    from harness.live_server import free_port

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the engine chooses its threads itself
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "service.log"
    process = demo_run.start_service(tiny_roberta, port, log, {"REWARD_ENGINE_STANDBY": "false"})
    try:
        demo_run.wait_ready(url, process, timeout_s=90)
        assert httpx.post(url + "/score", json={"texts": ["Have a lovely day."]}).status_code == 200
        assert cpu_batches(url) == {"all": 1, "all_but_one": 0}

        # A request whose body is still on its way is in progress in the front end.
        body = b'{"texts": ["You are kind."]}'
        held = socket.create_connection(("127.0.0.1", port))
        held.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
        )
        time.sleep(0.5)
        assert httpx.post(url + "/score", json={"texts": ["Thanks for the help!"]}).status_code == 200
        assert cpu_batches(url) == {"all": 1, "all_but_one": 1}

        held.sendall(body[5:])  # now alone again: every core
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        held.close()
        assert cpu_batches(url) == {"all": 2, "all_but_one": 1}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
