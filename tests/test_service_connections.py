"""Connection-level limits of `reward-service`: idle, dribbling and oversized requests are cut off,
the number of connections is bounded (silent ones make room, else a clear refusal), and /healthz
stays reachable meanwhile."""

from __future__ import annotations

import json
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
from harness.metrics import metric, read_metrics

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


def send_ignoring_a_close(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed before all of it was read: the answer is read after


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
        send_ignoring_a_close(sock, request + body)
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
            send_ignoring_a_close(sock, sent)
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


def score_request(texts: int = 1, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"texts": [f"text {i} " + "word " * 300 for i in range(texts)]}).encode()
    return (
        b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def score_count(port: int, status: str) -> float:
    text = read_metrics(f"http://127.0.0.1:{port}")
    return metric(text, f'reward_requests_total{{route="/score",scorer="roberta-hate",status="{status}"}}')


def statuses_of(answers: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d+)", answers)


def test_nothing_pipelined_after_a_request_refused_for_its_headers_is_run(service: tuple[int, Path]) -> None:
    """Requests after one refused with 431 are neither run nor answered: the connection ends with the
    431, at once (not when the body timeout of a request it half parsed runs out)."""
    port, _ = service
    oversized = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n"
    for before, statuses in ((b"", [b"431"]), (score_request(), [b"200", b"431"])):
        scored = score_count(port, "200") + score_count(port, "400")
        started = time.monotonic()
        with connect(port) as sock:
            send_ignoring_a_close(sock, before + oversized + score_request())
            answers = answer_of(sock)
        assert statuses_of(answers) == statuses, answers[:300]
        assert time.monotonic() - started < 3  # the body timeout here is 4 s
        assert score_count(port, "200") + score_count(port, "400") == scored + len(statuses) - 1


def test_an_answer_still_being_computed_is_sent_before_the_431_of_the_headers_after_it(
    service: tuple[int, Path],
) -> None:
    """Headers over the limit that arrive in pieces while the request before them is being scored:
    that request's answer first, then the 431."""
    port, _ = service
    with connect(port) as sock:
        sock.sendall(score_request(texts=64) + b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100)
        time.sleep(0.005)  # a read of its own, while the 64 texts are scored
        send_ignoring_a_close(sock, b"a" * 10_000)
        answers = answer_of(sock)
    assert statuses_of(answers) == [b"200", b"431"], answers[:300]


def chunked_score_request(trailers: bytes) -> bytes:
    body = json.dumps({"texts": ["I like you."]}).encode()
    return (
        b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
        + trailers
        + b"\r\n"
    )


def test_trailers_are_held_to_the_header_limit_and_never_change_the_requests_headers(
    service: tuple[int, Path],
) -> None:
    port, _ = service
    # A trailer is not a header: this one would be a 422 if it set the request's deadline.
    with connect(port) as sock:
        sock.sendall(chunked_score_request(b"X-Reward-Timeout-Ms: nonsense\r\n"))
        answer = answer_of(sock)
    assert statuses_of(answer) == [b"200"], answer[:300]
    # Trailers over REWARD_MAX_HEADER_BYTES (8192 here), sent whole or a piece at a time, of
    # which httptools would otherwise gather any amount in memory.
    big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1_000) for i in range(20))
    with connect(port) as sock:
        send_ignoring_a_close(sock, chunked_score_request(big))
        answer = answer_of(sock)
    assert statuses_of(answer) == [b"431"] and b"trailers" in answer, answer[:300]
    with connect(port) as sock:
        request = chunked_score_request(b"X-Pad: " + b"a" * 1_000_000 + b"\r\n")
        for start in range(0, len(request), 4_096):
            send_ignoring_a_close(sock, request[start : start + 4_096])
            if start == 65_536:
                time.sleep(0.3)  # the refusal has been sent by now: the rest is not needed
                sock.settimeout(0.5)
                assert sock.recv(100).startswith(b"HTTP/1.1 431")
                break
        else:
            raise AssertionError("a megabyte of trailers was read without a 431")


def test_a_body_timeout_is_counted_as_the_408_it_sent(service: tuple[int, Path]) -> None:
    port, _ = service
    timed_out, bad = score_count(port, "408"), score_count(port, "400")
    with connect(port) as sock:
        sock.sendall(score_request()[:-10])
        assert answer_of(sock).startswith(b"HTTP/1.1 408")
    deadline = time.monotonic() + 5
    while score_count(port, "408") < timed_out + 1:
        assert time.monotonic() < deadline, "the 408 was never counted"
        time.sleep(0.05)
    assert score_count(port, "400") == bad


def early_answer_then_dribble(port: int) -> socket.socket:
    """A request answered before its body is read (its declared length is over the body limit: a
    413 from the headers alone, as a 401 for a missing key would be); its body then dribbles in."""
    sock = connect(port)
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n")
    return sock


def test_a_body_dribbled_after_an_early_answer_holds_its_connection_no_longer_than_the_body_timeout(
    service: tuple[int, Path],
) -> None:
    port, _ = service
    with early_answer_then_dribble(port) as sock:
        sock.settimeout(2)
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 10:
            try:
                sock.send(b"x")
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue  # not closed yet: one more byte, 2 s later
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    assert closed and time.monotonic() - started < 6  # the body timeout here is 4 s


def test_connections_reading_bodies_already_answered_make_room_for_new_clients(
    service: tuple[int, Path],
) -> None:
    """Early answers (a 401 needs no key) with bodies dribbled after them cannot lock clients out."""
    port, log = service
    draining = [early_answer_then_dribble(port) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # every one answered
        for _ in range(5):
            assert healthz_status(port) == b"HTTP/1.1 200 OK"
    finally:
        for sock in draining:
            sock.close()
    assert "that had sent no complete request, to admit new ones" in log.read_text()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_offer_to_upgrade_to_h2c_is_ignored_and_the_request_served_with_its_body(
    service: tuple[int, Path], framing: str
) -> None:
    """`curl --http2 http://...` offers "Upgrade: h2c"; the request is served as HTTP/1.1, body and
    all, and the connection goes on to the next request (it used to be a 422: body missing)."""
    port, _ = service
    body = json.dumps({"texts": ["I like you.", "You are awful."]}).encode()
    if framing == "chunked":
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    offer = (
        b"POST /score HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Type: application/json\r\n" + framed
    )
    plain = score_request(extra_headers=b"Connection: close\r\n")
    with connect(port) as sock:
        sock.sendall(offer + plain)
        answers = answer_of(sock)
    assert statuses_of(answers) == [b"200", b"200"], answers[:400]
    first = json.loads(answers.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0])
    expected = httpx.post(
        f"http://127.0.0.1:{port}/score", content=body, headers={"content-type": "application/json"}
    )
    assert first["scores"] == expected.json()["scores"] and len(first["scores"]) == 2


def test_a_connection_whose_early_answered_body_then_arrives_in_full_is_closed_when_idle(
    service: tuple[int, Path],
) -> None:
    """The body read after an early answer ends the request: the connection is then as idle as after
    any answer, and closes after the keep-alive time (1 s here), with or without the start of
    the next request's headers in the same read (the header timeout is 3 s here)."""
    port, _ = service
    for rest in (b"abcde", b"abcdeGET /healthz HTTP/1.1\r\nHost:"):
        with connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
            sock.settimeout(2)
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
            sock.sendall(rest)
            started = time.monotonic()
            sock.settimeout(HEADER_TIMEOUT_S + 3)
            answer_of(sock)  # until the server closes it
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 2


def test_trailers_under_the_limit_are_taken_however_they_are_split_into_reads(
    service: tuple[int, Path],
) -> None:
    port, _ = service
    request = chunked_score_request(b"X-Pad: " + b"a" * 4_500 + b"\r\nX-B: c\r\n")
    trailers_at = request.index(b"X-Pad")
    for pieces in ([request], [request[:trailers_at], request[trailers_at:-12], request[-12:]]):
        with connect(port) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.1)  # a read of its own
            answer = answer_of(sock)
        assert statuses_of(answer) == [b"200"], answer[:300]


def test_many_pipelined_h2c_offers_are_each_answered(service: tuple[int, Path]) -> None:
    """Each ignored upgrade hands the rest of the read to a fresh parser: in a loop, not a recursion
    that 400 of them in one write would take past Python's limit."""
    port, _ = service
    offer = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with connect(port) as sock:
        sock.sendall(offer * 400 + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        sock.settimeout(20)
        answers = answer_of(sock)
    assert statuses_of(answers) == [b"200"] * 401


def test_a_websocket_upgrade_over_the_header_limit_is_refused_not_upgraded(service: tuple[int, Path]) -> None:
    port, _ = service
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: "
        + b"a" * 12_000
        + b"\r\n\r\n"
    )
    with connect(port) as sock:
        send_ignoring_a_close(sock, score_request(texts=16) + upgrade)
        answers = answer_of(sock)
    assert statuses_of(answers) == [b"200", b"431"], answers[:300]
