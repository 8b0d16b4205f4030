"""Reliability of the service alone: disconnects, graceful shutdown, secrets kept out of logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from demo import run as demo_run
from harness.engine_gate import EngineGate, wait_for_items_sent
from harness.live_server import free_port, serving
from harness.metrics import metric, wait_for_enqueued_items
from harness.service import LONG_TEXT, service_settings
from reward_service.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def test_client_disconnect_drops_the_work_and_the_server_stays_healthy(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    app = create_app(service_settings(tiny_roberta, max_wait_ms=0))
    with serving(app) as server:
        scorer = app.state.registry.get(None)
        with ThreadPoolExecutor(max_workers=1) as pool:
            gate.close()
            busy = pool.submit(
                httpx.post, server.url + "/score", json={"texts": [LONG_TEXT] * 16}, timeout=60
            )
            gate.wait_held(1)  # the engine is inside that batch
            body = json.dumps({"texts": ["gone"] * 7}).encode()
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                head = "POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                wait_for_items_sent(scorer, 16 + 7)  # queued behind the busy batch
            # The client gave up and closed the connection; the front end cancels its items.
            wait_for_items_sent(scorer, 16)
            gate.open()
            assert busy.result().status_code == 200
        assert httpx.post(server.url + "/score", json={"texts": ["after"]}).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert metric(metrics, 'reward_abandoned_items_total{scorer="roberta-hate"}') == 7
        # The abandoned request's items never ran: the batches held 16 items, then 1.
        assert metric(metrics, 'reward_batch_size_sum{scorer="roberta-hate"}') == 17
        assert 'status="499"' in metrics


def start_service(tiny_roberta: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = demo_run.start_service(tiny_roberta, port, log, {"REWARD_LOG_LEVEL": "info", **env})
    try:
        demo_run.wait_ready(f"http://127.0.0.1:{port}", process, timeout_s=60)
    except RuntimeError:
        process.kill()
        raise RuntimeError(log.read_text()) from None
    return process


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(tiny_roberta: Path, tmp_path: Path) -> None:
    port = free_port()
    process = start_service(tiny_roberta, port, {"REWARD_MAX_BATCH_TOKENS": "2048"}, tmp_path / "service.log")
    url = f"http://127.0.0.1:{port}/score"
    long_texts = ["Thank you for your help. You are welcome here. " * 60] * 128
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [
                pool.submit(httpx.post, url, json={"texts": long_texts}, timeout=120) for _ in range(4)
            ]
            # SIGTERM once all four are in the engine (a fixed sleep let a slow machine's requests
            # arrive after it, refused at connect); 4 x 128 windows in 2048-token batches are still
            # many batches of work then.
            wait_for_enqueued_items(f"http://127.0.0.1:{port}", 4 * 128)
            process.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 4
        assert all(len(r.json()["scores"]) == 128 for r in responses)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_api_key_and_aws_secrets_never_reach_logs_or_error_bodies(tiny_roberta: Path, tmp_path: Path) -> None:
    port = free_port()
    key, aws_secret = "sk-test-0123456789abcdef", "AWSSECRETabcdefghij0123456789"
    log = tmp_path / "service.log"
    process = start_service(
        tiny_roberta,
        port,
        {
            "REWARD_API_KEY": key,
            "AWS_SECRET_ACCESS_KEY": aws_secret,
            "AWS_ACCESS_KEY_ID": "AKIATEST",
            "REWARD_LOG_LEVEL": "debug",
        },
        log,
    )
    base = f"http://127.0.0.1:{port}"
    bodies = []
    try:
        for headers in ({}, {"Authorization": f"Bearer {key}x"}, {"Authorization": key}):
            response = httpx.post(base + "/score", json={"texts": ["a"]}, headers=headers)
            assert response.status_code == 401
            bodies.append(response.text)
        good = {"Authorization": f"Bearer {key}"}
        bodies.append(httpx.post(base + "/score", json={"texts": []}, headers=good).text)
        bodies.append(httpx.post(base + "/score/nope", json={"texts": ["a"]}, headers=good).text)
        bodies.append(httpx.get(base + "/scorers", headers=good).text)
        bodies.append(httpx.get(base + "/readyz").text)
        assert httpx.post(base + "/score", json={"texts": ["a"]}, headers=good).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    logs = log.read_text()
    assert "POST /score" in logs  # the access log was captured, so the check below means something
    for secret in (key, aws_secret):
        assert secret not in logs
        assert all(secret not in body for body in bodies)
