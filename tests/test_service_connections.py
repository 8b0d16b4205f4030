"""Connection-level limits of `reward-service`: idle, dribbling and oversized requests are cut off,
the number of connections is bounded (silent ones make room, else a clear refusal), and /healthz
stays reachable meanwhile."""

from __future__ import annotations

import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo import run as demo_run

HEADER_TIMEOUT_S = 3
MAX_CONNECTIONS = 500
HOSTILE = 2_000


@pytest.fixture(scope="module")
def service(tiny_roberta: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HOSTILE + 256:
        pytest.skip(f"the open-file hard limit ({hard}) is too low to open {HOSTILE} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65_536, hard))
    log = tmp_path_factory.mktemp("connections") / "service.log"
    env = {
        "REWARD_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "REWARD_BODY_TIMEOUT_S": "4",
        "REWARD_KEEP_ALIVE_S": "1",
        "REWARD_MAX_HEADER_BYTES": "8192",
        "REWARD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "REWARD_RETRY_AFTER_S": "3",
    }
    try:
        with demo_run.running_service(tiny_roberta, log, env) as (url, _):
            yield int(url.rsplit(":", 1)[1]), log
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def healthz_status(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return answer_of(sock).split(b"\r\n", 1)[0]


def open_idle(port: int, n: int) -> list[socket.socket]:
    return [connect(port) for _ in range(n)]


def test_healthz_answers_while_2000_idle_and_dribbling_sockets_are_open_and_they_are_dropped(
    service: tuple[int, Path],
) -> None:
    """2,000 silent sockets against a bound of 500: the oldest silent ones make room for new ones."""
    port, log = service
    idle = open_idle(port, HOSTILE - 50)
    dribbling = open_idle(port, 50)
    stop = threading.Event()

    def dribble() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            for sock in dribbling:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
            if stop.wait(0.5):
                return

    threading.Thread(target=dribble, daemon=True).start()
    try:
        for _ in range(10):
            assert healthz_status(port) == b"HTTP/1.1 200 OK"
        # Past the header timeout the server has closed every hostile socket: the idle ones
        # silently or with a 408, the dribbling ones with a 408.
        for sock in idle + dribbling:
            sock.settimeout(HEADER_TIMEOUT_S + 10)
        answers = [answer_of(sock) for sock in idle + dribbling]
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers)
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers[-50:])
    finally:
        stop.set()
        for sock in idle + dribbling:
            sock.close()
    assert healthz_status(port) == b"HTTP/1.1 200 OK"
    assert "that had sent no complete request, to admit new ones" in log.read_text()


def test_a_header_over_the_limit_gets_431_without_being_read_in_full(service: tuple[int, Path]) -> None:
    port, _ = service
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 16_384)
        # The rest of a 64 MB header never has to be sent: the answer comes first.
        assert answer_of(sock).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert healthz_status(port) == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(("header_bytes", "status"), [(7_000, b"200"), (12_000, b"431")])
def test_headers_that_arrive_whole_in_one_write_are_held_to_the_limit(
    service: tuple[int, Path], header_bytes: int, status: bytes
) -> None:
    """Headers complete in the chunk that carries them are counted too (REWARD_MAX_HEADER_BYTES is
    8192 here), with the body that follows them in the same write not counted."""
    port, _ = service
    body = b'{"texts": ["hi"]}' + b" " * 20_000
    head = b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
    head += b"Content-Length: %d\r\nX-Big: " % len(body)
    request = head + b"a" * (header_bytes - len(head) - 4) + b"\r\n\r\n"
    assert len(request) == header_bytes
    with connect(port) as sock:
        try:
            sock.sendall(request + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before all of it was read: the answer is read below
        assert answer_of(sock).startswith(b"HTTP/1.1 " + status)


def test_blank_lines_before_a_request_or_a_request_before_it_do_not_hide_oversized_headers(
    service: tuple[int, Path],
) -> None:
    """The parser skips empty lines before a request line, and a pipelined request follows another
    in the same write: neither lets headers over the limit (8192 here) through."""
    port, _ = service
    big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n"
    small = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    for sent, statuses in ((b"\r\n\r\n" + big, [b"431"]), (small + big, [b"200", b"431"])):
        with connect(port) as sock:
            try:
                sock.sendall(sent)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answers = answer_of(sock)
        assert re.findall(rb"HTTP/1\.1 (\d+)", answers) == statuses, answers[:300]
    assert healthz_status(port) == b"HTTP/1.1 200 OK"


def test_the_rest_of_a_body_answered_early_is_not_taken_for_headers(service: tuple[int, Path]) -> None:
    """A request answered before its body is read (refused from its headers, or a route that reads
    no body): the body bytes that follow are that request's, not the next one's headers."""
    port, _ = service
    body = b"a" * 100_000  # over REWARD_MAX_HEADER_BYTES (8192)
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.2)  # the answer is sent before any of the body
        try:
            for start in range(0, len(body), 10_000):
                sock.sendall(body[start : start + 10_000])
                time.sleep(0.01)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        except BrokenPipeError:
            pass  # closed by the server: what it sent before is read below
        answers = answer_of(sock)
    # Both answers on the one connection (the second follows the first's body directly).
    assert re.findall(rb"HTTP/1\.1 \d+", answers) == [b"HTTP/1.1 200"] * 2, answers[:400]


def test_a_body_that_stops_arriving_gets_408_and_nothing_is_scored(service: tuple[int, Path]) -> None:
    port, log = service
    with connect(port) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"texts": ["a'
        )
        answer = answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout") and b"REWARD_BODY_TIMEOUT_S" in answer
    assert "Traceback" not in log.read_text()


def test_idle_keep_alive_connections_are_closed(service: tuple[int, Path]) -> None:
    port, _ = service
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        assert answer_of(sock).startswith(b"HTTP/1.1 200 OK")  # then closed by the server
        assert time.monotonic() - started < 8


def test_when_every_connection_is_busy_a_new_one_gets_503_with_retry_after_and_a_log_line(
    service: tuple[int, Path],
) -> None:
    port, log = service
    busy = open_idle(port, MAX_CONNECTIONS)
    try:
        for sock in busy:  # a request under way: headers in, body still coming
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.5)
        with connect(port) as sock:
            refused = answer_of(sock)
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert b"retry-after: 3" in refused and b"too many open connections" in refused
    finally:
        for sock in busy:
            sock.close()
    assert (
        f"refused 1 connection(s) with 503, every open one being busy: {MAX_CONNECTIONS} open"
        in log.read_text()
    )
    deadline = time.monotonic() + 10
    while healthz_status(port) != b"HTTP/1.1 200 OK":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
