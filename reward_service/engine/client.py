"""EngineClient: the front end's connection to one engine process.

One DEALER socket on the front end's event loop; a receive task resolves each request's future
from the engine's answers. A socket monitor notices when the engine process goes away: every
request it had is answered with 503 + Retry-After at once (never a 500, never a made-up score),
and the client stays "down" until the restarted engine answers a status query.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from reward_service.engine import protocol
from reward_service.errors import NotReady, Overloaded, ScoringFailed, ServiceError

log = logging.getLogger(__name__)

STATUS_POLL_S = 0.25


@dataclass(frozen=True)
class EngineScores:
    """One row of logits per sequence, and where the request's time in the engine went (seconds)."""

    logits: list[list[float]]
    # From sending the items until their first batch started (the socket, the engine's queue).
    queue_s: float
    # From then until their last batch finished.
    inference_s: float


class EngineUnavailable(NotReady):
    """The engine process is gone (restarting) or not reachable: retrying shortly can help. Not an
    overload (TEI's routes answer it as unhealthy, not as a 429)."""


class EngineClient:
    def __init__(self, address: str, context: zmq.asyncio.Context, retry_after_s: int) -> None:
        self.address = address
        self._context = context
        self._retry_after_s = retry_after_s
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[protocol.FromEngine]] = {}
        self._items: dict[int, int] = {}
        self.status: protocol.EngineStatus | None = None
        # The engine's throughput as its last answer gave it; None until one did.
        self.tokens_per_s: float | None = None
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._socket: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ready(self) -> bool:
        return self._connected and self.status is not None and self.status.state == "ready"

    @property
    def outstanding_items(self) -> int:
        return sum(self._items.values())

    async def start(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        # Send only over a finished connection: with the engine gone, sending fails at once
        # instead of queueing requests for an engine that may never come back.
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.LINGER, 0)
        self._monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        socket.connect(self.address)
        self._socket = socket
        self._tasks = [
            asyncio.create_task(self._receive(), name=f"engine-receive {self.address}"),
            asyncio.create_task(self._watch_connection(), name=f"engine-monitor {self.address}"),
            asyncio.create_task(self._poll_status(), name=f"engine-status {self.address}"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_all(EngineUnavailable("the service is shutting down", self._retry_after_s))
        if self._socket is not None:
            self._socket.disable_monitor()
            self._socket.close()
        if self._monitor is not None:
            self._monitor.close()

    async def score(
        self, token_ids: bytes, lengths: list[int], budget_s: float = 0.0, sender_idle: bool = False
    ) -> EngineScores:
        """One row of logits per sequence; raises a ServiceError (503 when a retry can help).

        With `budget_s` (seconds left before the request's deadline), the engine refuses at once
        (503) a request it cannot finish in time. `sender_idle`: this process has no other request
        in progress (`protocol.ScoreItems`)."""
        sent = time.perf_counter()
        message = protocol.ScoreItems(next(self._ids), token_ids, lengths, budget_s, sender_idle)
        answer = await self._call(message, len(lengths))
        if isinstance(answer, protocol.ScoredItems):
            if answer.tokens_per_s > 0:
                self.tokens_per_s = answer.tokens_per_s
            queue_s = max(0.0, time.perf_counter() - sent - answer.inference_s)
            return EngineScores(protocol.unpack_logits(answer), queue_s, answer.inference_s)
        raise self._error(answer)

    async def _call(
        self, message: protocol.ScoreItems | protocol.StatusQuery, items: int
    ) -> protocol.FromEngine:
        if not self._connected or self._socket is None:
            raise self._not_connected()
        future: asyncio.Future[protocol.FromEngine] = asyncio.get_running_loop().create_future()
        self._waiting[message.request_id] = future
        self._items[message.request_id] = items
        try:
            try:
                await self._socket.send(protocol.encode(message), zmq.NOBLOCK)
            except zmq.Again:
                raise self._not_connected() from None
            return await future
        except asyncio.CancelledError:
            # The client went away: the engine drops whatever of this request has not run yet.
            if isinstance(message, protocol.ScoreItems) and self._connected:
                try:
                    await self._socket.send(
                        protocol.encode(protocol.CancelItems(message.request_id)), zmq.NOBLOCK
                    )
                except zmq.ZMQError:
                    pass
            raise
        finally:
            self._waiting.pop(message.request_id, None)
            self._items.pop(message.request_id, None)

    def _not_connected(self) -> EngineUnavailable:
        return EngineUnavailable(
            f"the scoring engine at {self.address} is not connected", self._retry_after_s
        )

    def _error(self, failure: protocol.FromEngine) -> ServiceError:
        if not isinstance(failure, protocol.EngineFailure):
            return ScoringFailed(f"unexpected answer from the scoring engine: {type(failure).__name__}")
        if failure.kind == "model_error":
            return ScoringFailed(failure.message)
        if failure.kind in ("not_ready", "shutting_down"):
            return NotReady(failure.message, self._retry_after_s)
        return Overloaded(failure.message, self._retry_after_s)

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            frame = await self._socket.recv()
            try:
                message = protocol.decode_from_engine(frame)
            except Exception:  # noqa: BLE001 - a bad frame must not stop the receive loop
                log.exception("undecodable message from the engine at %s", self.address)
                continue
            if isinstance(message, protocol.EngineStatus):
                self.status = message
            future = self._waiting.get(message.request_id)
            if future is not None and not future.done():
                future.set_result(message)

    async def _watch_connection(self) -> None:
        assert self._monitor is not None
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
            elif event == zmq.EVENT_DISCONNECTED and self._connected:
                self._connected = False
                self.status = None
                log.error(
                    "lost the scoring engine at %s; failing its %d requests", self.address, len(self._waiting)
                )
                self._fail_all(
                    EngineUnavailable(
                        "the scoring engine stopped; it is being restarted", self._retry_after_s
                    )
                )

    async def _poll_status(self) -> None:
        """Ask for the engine's status until it is ready, and again after every reconnection."""
        while True:
            if self._connected and not self.ready:
                try:
                    await asyncio.wait_for(
                        self._call(protocol.StatusQuery(next(self._ids)), 0), STATUS_POLL_S * 4
                    )
                except (TimeoutError, ServiceError):
                    pass
            await asyncio.sleep(STATUS_POLL_S)

    def _fail_all(self, error: ServiceError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
