"""Connection-level limits that uvicorn lacks: header and body read timeouts, a header size limit,
and a bound on open connections.

uvicorn reads a request's headers with no time or size limit and accepts connections until the
process runs out of file descriptors, so a few thousand idle or dribbling sockets lock every client
out (nothing logged), and one 64 MB header stalls the event loop for seconds. `LimitedHttpProtocol`
is uvicorn's httptools protocol with those limits added. `protocol_class(settings)` binds it to
one settings object, for a server in this process (`reward-service`, the in-process test server);
`--workers N` processes import `WORKER_PROTOCOL_PATH`, bound to the settings their parent serialized.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reward_service.request_counter import note_connection_answer
from reward_service.settings import ServiceSettings, settings_from_parent

WORKER_PROTOCOL_PATH = "reward_service.connections:WorkerHttpProtocol"
# File descriptors kept for what is not a client connection (engine sockets, model files, logs).
RESERVED_FDS = 128
REFUSAL_LOG_EVERY_S = 10.0
# Bytes each chunk of a chunked body may spend on its framing ("<hex size>\r\n", the "\r\n" after
# its data) before the rest counts with trailers against REWARD_MAX_HEADER_BYTES: more than any
# real client's chunk sizes take, far less than trailers or chunk extensions can.
CHUNK_FRAMING_ALLOWANCE = 32
log = logging.getLogger("reward_service")


def raise_open_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_bound(settings: ServiceSettings) -> int:
    """REWARD_MAX_CONNECTIONS, lowered to what the open-file limit allows (with a warning)."""
    fd_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = max(1, fd_limit - RESERVED_FDS)
    if settings.max_connections > allowed:
        log.warning(
            "REWARD_MAX_CONNECTIONS=%d exceeds what the open-file limit (%d) allows; using %d. "
            "Raise the limit (ulimit -n, or the container's nofile) to allow more.",
            settings.max_connections,
            fd_limit,
            allowed,
        )
        return allowed
    return settings.max_connections


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ConnectionLimits:
        return cls(
            max_connections=connection_bound(settings),
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            retry_after_s=settings.retry_after_s,
        )


def protocol_class(settings: ServiceSettings) -> type[LimitedHttpProtocol]:
    """`LimitedHttpProtocol` with the limits of `settings`, for one uvicorn server's `http` option."""
    namespace = {"limits": ConnectionLimits.from_settings(settings), "awaiting_headers": {}, "draining": {}}
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), namespace)


@functools.cache
def _worker_protocol() -> type[LimitedHttpProtocol]:
    return protocol_class(settings_from_parent())


def __getattr__(name: str) -> object:
    # `WorkerHttpProtocol` is built when a `--workers N` process first imports it (uvicorn imports
    # WORKER_PROTOCOL_PATH by name), from the settings its parent serialized.
    if name == "WorkerHttpProtocol":
        return _worker_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain_response(status_line: bytes, detail: str, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (
        status_line
        + b"content-type: application/json\r\n"
        + extra_headers
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


class _RateLimitedWarning:
    """Counts events and logs them at most once per interval, so a flood logs a line, not thousands."""

    def __init__(self, message: str) -> None:
        self.message = message  # formatted with (count, open connections, bound)
        self.count = 0
        self.last_logged = -REFUSAL_LOG_EVERY_S

    def note(self, open_connections: int, bound: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last_logged >= REFUSAL_LOG_EVERY_S:
            log.warning(self.message, self.count, open_connections, bound)
            self.count, self.last_logged = 0, now


_evictions = _RateLimitedWarning(
    "closed %d connection(s) that had sent no complete request, to admit new ones: "
    "%d open, REWARD_MAX_CONNECTIONS=%d"
)
_refusals = _RateLimitedWarning(
    "refused %d connection(s) with 503, every open one being busy: %d open, REWARD_MAX_CONNECTIONS=%d"
)


class LimitedHttpProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection with read timeouts, a header size limit and a bound on connections.

    Use a subclass from `protocol_class`, which sets the class attributes below."""

    limits: ClassVar[ConnectionLimits]
    # This server's connections waiting for a request's headers, oldest first: what is evicted
    # when the bound is hit.
    awaiting_headers: ClassVar[dict[LimitedHttpProtocol, None]]
    # Connections whose request was answered before its body was read, still reading that body
    # (so that a client sending it sees the answer, not a reset): evicted first.
    draining: ClassVar[dict[LimitedHttpProtocol, None]]

    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    # The headers of the request just parsed were over the limit: it was refused and the
    # connection is closing; nothing more of it is parsed into a request.
    _over_header_limit = False
    _headers_seen = 0  # requests whose headers the parser has read in full on this connection
    _reading_headers = False
    # The parser has reached the end of the last request (its body included): what comes next is
    # the next request. A request answered before its body was read has not.
    _between_requests = False
    _refused = False
    # Between a request's headers and the end of its body: a header the parser reports now is a
    # trailer of a chunked body.
    _in_body = False
    _trailer_bytes = 0  # the current request's trailers, as parsed (on_header)
    _body_bytes = 0  # body bytes the parser has delivered on this connection
    _chunks = 0  # chunk headers the parser has read on this connection
    # Bytes of the current request after its headers that were neither body nor allowed framing.
    _framing_bytes = 0
    # A request that offers to switch to a protocol this server does not speak (curl --http2's
    # "Upgrade: h2c") is served as the HTTP/1.1 request it also is: RFC 9110 (7.8) lets a server
    # ignore the offer. httptools stops at its headers, so a fresh parser reads its body: the
    # framing header it is primed with ("Content-Length: N", or b"" for no body) is kept here.
    _ignored_upgrade: bytes | None = None
    _priming = False  # the fresh parser is reading that framing header: no request of its own

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        bound = limits.max_connections
        if len(self.connections) >= bound and not self._evict_oldest_waiting(bound):
            self._refused = True
            self.transport = transport
            _refusals.note(len(self.connections), bound)
            transport.write(
                _plain_response(
                    b"HTTP/1.1 503 Service Unavailable\r\n",
                    "too many open connections; retry later",
                    b"retry-after: %d\r\n" % limits.retry_after_s,
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_awaiting_headers()
        self._stop_awaiting_body()
        self.draining.pop(self, None)
        if self._refused:
            return
        super().connection_lost(exc)

    @classmethod
    def _evict_oldest_waiting(cls, bound: int) -> bool:
        """Close a connection that only reads the rest of an answered request's body, else the one
        that has waited longest for a request's headers, if any.

        A client sends its headers as soon as it connects, so the longest-silent connection is the
        likeliest to be idle or hostile; closing it keeps the server reachable under a flood of them.
        """
        for oldest in cls.draining:
            oldest.transport.close()  # its answer is sent: nothing more to say
            cls.draining.pop(oldest)
            _evictions.note(len(oldest.connections), bound)
            return True
        for oldest in cls.awaiting_headers:
            _evictions.note(len(oldest.connections), bound)
            oldest._reject(
                b"HTTP/1.1 408 Request Timeout\r\n", "closed to admit new connections: no request received"
            )
            oldest._stop_awaiting_headers()
            return True
        return False

    def data_received(self, data: bytes) -> None:
        rest: bytes | None = data
        while rest is not None:
            rest = self._receive(rest)

    def _receive(self, data: bytes) -> bytes | None:
        if self._refused or self._over_header_limit:
            return None
        # A finished request has a cycle; the first one's headers are awaited from connection_made.
        if not self._reading_headers and self._between_requests and self.cycle.response_complete:
            self._await_headers()  # the next request on a kept-alive connection
        # Whether this chunk starts inside a request's headers: the first request's, or those after
        # the last complete message (also while that one's answer is still being computed).
        in_headers = self._reading_headers or self._between_requests
        in_body = self._in_body
        headers_seen, body_bytes, chunks = self._headers_seen, self._body_bytes, self._chunks
        rest = self._parse(data)
        if rest is not None:
            return rest  # the outer read's accounting is moot: an upgrade's headers ended in it
        if self.transport.is_closing():
            return None
        if in_headers and self._headers_seen == headers_seen:
            # No headers ended in it: the whole chunk was header bytes. Headers that end in a chunk
            # are measured exactly in on_headers_complete, whichever request they belong to.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_over_header_limit()
        elif in_body and self._in_body and self._headers_seen == headers_seen:
            # The whole chunk lay inside one request's body: what was not body is chunk framing
            # and trailers, which httptools gathers in memory without a bound of its own.
            framing = len(data) - (self._body_bytes - body_bytes)
            allowed = CHUNK_FRAMING_ALLOWANCE * (self._chunks - chunks)
            self._framing_bytes = max(0, self._framing_bytes + framing - allowed)
            self._check_framing(self._framing_bytes)
        return None

    def _parse(self, data: bytes) -> bytes | None:
        """uvicorn's parsing of a chunk, with an offer to upgrade to an unknown protocol ignored."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._over_header_limit:
                pass  # refused for its headers (431 sent or pending): never upgraded
            elif self._ignored_upgrade is not None:
                return self._parse_after_ignored_upgrade(data[upgrade.args[0] :])
            elif self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
        return None

    def _parse_after_ignored_upgrade(self, rest: bytes) -> bytes | None:
        framing, self._ignored_upgrade = self._ignored_upgrade or b"", None
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's parser
        if framing:
            self._priming = True
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        return rest or None

    def _body_framing(self) -> bytes:
        """The header that frames this request's body, for a parser that did not read its headers."""
        for name, value in self.headers:
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return b"Transfer-Encoding: chunked\r\n"
        for name, value in self.headers:
            if name == b"content-length" and value.strip() not in (b"", b"0"):
                return b"Content-Length: " + value.strip() + b"\r\n"
        return b""

    def on_message_begin(self) -> None:
        # Nothing after a refused request is parsed into one; a priming header block is none.
        if not self._over_header_limit and not self._priming:
            if self.cycle is not None and self.cycle.response_complete and not self._reading_headers:
                self._unset_keepalive_if_required()
                self._await_headers()  # after a drained request, in the read that ended its body
            super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._priming:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._priming:
            return
        if self._in_body:
            # A trailer: counted, never added to the request's headers (which the app has read,
            # and which a trailer must not change, e.g. the deadline in X-Reward-Timeout-Ms).
            self._trailer_bytes += len(name) + len(value) + 4  # exact, and apart from the reads' count
            self._check_framing(self._trailer_bytes)
        elif not self._over_header_limit:
            super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_headers_complete(self) -> None:
        if self._priming:
            self._priming = False  # the request whose body follows was started from its own headers
            return
        if self._over_header_limit:
            return  # a request pipelined after one refused: never run
        self._headers_seen += 1
        self._between_requests = False
        self._stop_awaiting_headers()
        if self._parsed_header_bytes() > self.limits.max_header_bytes:
            # Neither the app nor the body: the request is refused and the connection closed, once
            # the requests pipelined before it have had their answers.
            self._refuse_over_header_limit()
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:  # not a websocket's upgrade
            if self.parser.should_upgrade():
                self._ignored_upgrade = self._body_framing()
            self._in_body, self._framing_bytes, self._trailer_bytes = True, 0, 0
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self._over_header_limit:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._over_header_limit or self._ignored_upgrade:
            return  # refused; or httptools stopping at an upgrade's headers, before their body
        answered = self.cycle is not None and self.cycle.response_complete
        self._in_body = False
        self._between_requests = True
        self._header_bytes = 0  # the next request's headers start here
        self._stop_awaiting_body()
        self.draining.pop(self, None)
        super().on_message_complete()
        if answered and not self.transport.is_closing():  # drained: idle from here, as after an answer
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._over_header_limit and not self._answers_pending():
            self._refuse_header_size()
        elif self._in_body and self.cycle.response_complete and not self.transport.is_closing():
            # Answered before its body was read: the rest of the body is read (and dropped) until
            # the body timeout, so that a client still sending it gets to read the answer.
            if self._body_timer is None:
                self.transport.close()  # that timeout has passed already
            else:
                self.draining[self] = None

    def _refuse_over_header_limit(self) -> None:
        """Refuse the request whose headers are over the limit: at once, or (keeping its place in a
        pipeline) once the requests before it on the connection have had their answers."""
        self._over_header_limit = True
        if self._answers_pending():
            self.flow.pause_reading()
        else:
            self._refuse_header_size()

    def _check_framing(self, counted: int) -> None:
        """431 once `counted` bytes of trailers or chunk framing pass the header limit."""
        if counted > self.limits.max_header_bytes:
            self._end_request(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
                "a chunked body's trailers and chunk framing exceed REWARD_MAX_HEADER_BYTES",
            )

    def _answers_pending(self) -> bool:
        """Whether requests before this one on the connection still await their answers."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _parsed_header_bytes(self) -> int:
        """The request line and headers the parser has just read, as sent (less optional spaces):
        "METHOD url HTTP/1.1", each "name: value", every CRLF."""
        request_line = len(self.parser.get_method()) + len(self.url) + len(" HTTP/1.1\r\n") + 1
        return request_line + sum(len(name) + len(value) + 4 for name, value in self.headers) + 2

    def _refuse_header_size(self) -> None:
        self._reject(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            "request line and headers exceed REWARD_MAX_HEADER_BYTES",
        )

    def _await_headers(self) -> None:
        self._reading_headers = True
        self.awaiting_headers[self] = None
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_timed_out)

    def _stop_awaiting_headers(self) -> None:
        self._reading_headers = False
        self.awaiting_headers.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _stop_awaiting_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._reading_headers:
            self._stop_awaiting_headers()
            self._reject(
                b"HTTP/1.1 408 Request Timeout\r\n",
                "request headers not received within REWARD_HEADER_TIMEOUT_S",
            )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.cycle is None:
            return
        if self.cycle.response_complete:
            self.transport.close()  # answered early; the rest of the body is not waited for
        elif not self.cycle.response_started:
            self._end_request(
                b"HTTP/1.1 408 Request Timeout\r\n",
                "request body not received within REWARD_BODY_TIMEOUT_S",
            )
        # else the app is answering: the connection closes once it has (on_response_complete).

    def _end_request(self, status_line: bytes, detail: str) -> None:
        """End the request being read with this answer (only a close once the app has started its
        own), and tell the app: its receive() reports a disconnect, its count this status."""
        if self.cycle is not None and not self.cycle.response_complete:
            if not self.cycle.response_started:
                note_connection_answer(self.cycle.scope, int(status_line.split()[1]))
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
        else:
            self._reject(status_line, detail)

    def _reject(self, status_line: bytes, detail: str) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(_plain_response(status_line, detail))
        self.transport.close()
