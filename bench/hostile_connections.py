"""Hostile connections: idle and slow sockets, a huge header, and whether /healthz stays fast.

Starts a server with the tiny stand-in classifier, its open-file limit (soft and hard) lowered to
`--fd-limit` (1,024, a common container default), then:

1. times `--probes` GET /healthz, each on a fresh connection (the baseline);
2. opens `--idle` sockets that send nothing and `--dribble` sockets that send a request line one
   byte a second, plus one that sends a `--header-mb` MB header;
3. times the same probes while they are open (a probe that fails or takes over 5 s is an error);
4. waits `--wait-s` and counts the hostile sockets the server has closed.

`--server` picks what serves the app: `reward-service` (the shipped command, with its defaults) or,
to compare, plain `uvicorn`, `granian` or `hypercorn` started on the same app factory (`pip install
granian hypercorn` first; they are not dependencies of the service).

    python -m bench.hostile_connections --server reward-service
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.stand_ins import build_classifier
from demo.run import ROOT, checkout_python_path, free_port, stop, wait_ready

APP_FACTORY = "reward_service.app:create_app"


def server_command(server: str, port: int) -> list[str]:
    host = ["127.0.0.1", str(port)]
    commands = {
        "reward-service": ["-m", "reward_service", "--host", host[0], "--port", host[1]],
        "uvicorn": ["-m", "uvicorn", "--factory", APP_FACTORY, "--host", host[0], "--port", host[1]],
        "granian": [
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--factory",
            APP_FACTORY,
            "--http",
            "1",
            "--host",
            host[0],
            "--port",
            host[1],
            "--http1-header-read-timeout",
            "10000",
        ],
        "hypercorn": [
            "-m",
            "hypercorn",
            f"{APP_FACTORY}()",
            "--bind",
            f"{host[0]}:{host[1]}",
            "--keep-alive",
            "10",
            "--read-timeout",
            "10",
        ],
    }
    return [sys.executable, *commands[server]]


def start_server(server: str, port: int, fd_limit: int, model: Path, log: Path) -> subprocess.Popen[bytes]:
    def lower_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    env = {
        **os.environ,
        "PYTHONPATH": checkout_python_path(),
        "REWARD_ROBERTA_MODEL": str(model),
        "REWARD_DEVICE": "cpu",
        "REWARD_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        server_command(server, port),
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=lower_fd_limit,
    )


def probe_healthz(port: int, timeout_s: float = 5.0) -> tuple[float, str]:
    """Seconds for one GET /healthz on a fresh connection, and its status line (or the error)."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            answer = sock.recv(64)
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as error:
        status = type(error).__name__
    return time.perf_counter() - started, status


def probe_round(port: int, probes: int) -> dict[str, object]:
    results = [probe_healthz(port) for _ in range(probes)]
    ok = [seconds for seconds, status in results if status.startswith("HTTP/1.1 200") and seconds < 5]
    return {
        "ok": f"{len(ok)}/{probes}",
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "max_ms": round(max(ok) * 1000, 1) if ok else None,
        "failures": sorted({status for _, status in results if not status.startswith("HTTP/1.1 200")}),
    }


def open_sockets(port: int, n: int) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    for sock in sockets:
        sock.setblocking(False)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this (non-blocking) socket, after any answer it sent."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def dribble(sockets: list[socket.socket], stop_event: threading.Event) -> None:
    line = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000
    for position in range(len(line)):
        if stop_event.wait(1.0):
            return
        for sock in sockets:
            try:
                sock.send(line[position : position + 1])
            except OSError:
                pass


def send_huge_header(port: int, megabytes: int, result: dict[str, object]) -> None:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Big: "
            try:
                sock.sendall(head + b"a" * (megabytes << 20) + b"\r\n\r\n")
            except OSError:
                pass  # the server answered and closed before reading it all
            answer = sock.recv(64)
        result["status"] = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as error:
        result["status"] = type(error).__name__
    result["seconds"] = round(time.perf_counter() - started, 2)


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, object]:
    model = build_classifier("tiny")
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"hostile-{args.server}.log"
    process = start_server(args.server, port, args.fd_limit, model, log)
    report: dict[str, object] = {"server": args.server, "fd_limit": args.fd_limit}
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        report["baseline"] = probe_round(port, args.probes)
        idle = open_sockets(port, args.idle)
        slow = open_sockets(port, args.dribble)
        stop_event = threading.Event()
        threading.Thread(target=dribble, args=(slow, stop_event), daemon=True).start()
        huge: dict[str, object] = {}
        big_sender = threading.Thread(target=send_huge_header, args=(port, args.header_mb, huge))
        big_sender.start()
        time.sleep(1.0)
        report["opened"] = {"idle": len(idle), "dribbling": len(slow)}
        report["under_attack"] = probe_round(port, args.probes)
        big_sender.join()
        report["huge_header"] = huge
        time.sleep(args.wait_s)
        report[f"closed_after_{args.wait_s:.0f}s"] = {
            "idle": sum(closed_by_server(s) for s in idle),
            "dribbling": sum(closed_by_server(s) for s in slow),
        }
        report["after"] = probe_round(port, args.probes)
        stop_event.set()
        for sock in idle + slow:
            sock.close()
        report["server_alive"] = process.poll() is None
    finally:
        stop(process)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server", default="reward-service", choices=["reward-service", "uvicorn", "granian", "hypercorn"]
    )
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--dribble", type=int, default=100)
    parser.add_argument("--header-mb", type=int, default=64)
    parser.add_argument("--fd-limit", type=int, default=1024)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--wait-s", type=float, default=20)
    args = parser.parse_args()
    for key, value in run(args).items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
