"""EngineCore: the process that owns one device's model, and its one busy loop.

Nothing else busy runs in this process, so the model's PyTorch ops never wait for the GIL behind
JSON parsing, HTTP or tokenization (those run in the front-end processes). The loop:

    receive messages (ROUTER socket) -> FairScheduler -> ModelRunner.launch(batch k+1)
    -> ModelRunner.collect(batch k) -> logits back to each request's front end

Launching batch k+1 before collecting batch k lets a GPU run one batch while the next is padded
and copied. The model loads in a background thread so that status queries are answered meanwhile.
Another thread answers heartbeats on a socket of its own (see `protocol.Heartbeat`): it needs the
GIL only for a moment, which PyTorch's ops release, so a long batch does not delay its replies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from reward_service.allocator import release_freed_memory
from reward_service.engine import protocol
from reward_service.engine.admission import Admission, Queued
from reward_service.engine.metrics import EngineMetrics
from reward_service.engine.model_card import read_model_card
from reward_service.engine.model_runner import (
    LaunchedBatch,
    ModelRunner,
    load_classifier,
    prepare_cuda,
    resolve_device,
    resolve_dtype,
)
from reward_service.engine.protocol import EngineConfig, EngineFailure, FailureKind
from reward_service.engine.scheduler import BatchItem, FairScheduler, QueuedRequest

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200
EXIT_MODEL_BROKEN = 70
# How many inputs with non-finite logits an error names, lowest index first.
NAMED_BAD_INPUTS = 5


@dataclass
class _InFlight:
    items: list[BatchItem]
    launched: LaunchedBatch
    started: float


class EngineCore:
    def __init__(self, config: EngineConfig, threads: CpuThreads | None = None) -> None:
        self.config = config
        self.metrics = EngineMetrics(config.scorer)
        # A CPU engine's intra-op threads, chosen per batch (`front_end_waits`); None: left as they are.
        self._threads = threads
        self._threads_now = None if threads is None else threads.shared
        self.scheduler = FairScheduler(config.max_batch_tokens, config.max_batch_items, config.queue_capacity)
        self._requests: dict[tuple[bytes, int], QueuedRequest] = {}
        self.admission = Admission(min_rate_tokens=config.max_batch_tokens // 8)
        self._last_completed = 0.0
        self._batches: deque[list[BatchItem]] = deque()
        self._runner: ModelRunner | None = None
        self._state: protocol.EngineState = "loading"
        self._error: str | None = None
        self._device: str | None = None
        self._dtype: str | None = None
        self._card: protocol.ModelCard | None = None
        self._stopping = False
        self._ran_since_trim = False
        self._parent = os.getppid()
        # When the busy loop's current step began; None while it waits for messages.
        self._busy_since: float | None = None
        self._serving = True
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 1000)

    def serve(self) -> None:
        prepare_cuda(self.config.device)
        self._bind()
        heartbeats = self._heartbeat_socket()
        heartbeat_thread = threading.Thread(
            target=self._answer_heartbeats, args=(heartbeats,), name="engine-heartbeat", daemon=True
        )
        heartbeat_thread.start()
        threading.Thread(target=self._load, name="engine-load", daemon=True).start()
        log.info(
            "engine for %s listening on %s (pid %d)", self.config.scorer, self.config.address, os.getpid()
        )
        in_flight: _InFlight | None = None
        while not self._finished(in_flight):
            self._busy_since = None
            self._receive(self._poll_timeout_ms(in_flight))
            self._busy_since = time.monotonic()
            self._form_window()
            if in_flight is not None and not in_flight.launched.asynchronous:
                # Its logits are ready already (CPU): send them before running the next batch.
                self._complete(in_flight)
                in_flight = None
            launched = self._launch_next()
            if in_flight is not None:
                self._complete(in_flight)
            in_flight = launched
            self.metrics.queue_depth.set(self.scheduler.waiting_items + sum(map(len, self._batches)))
        self._serving = False
        heartbeat_thread.join()
        self._socket.close()
        self._context.term()

    def stop(self) -> None:
        """Refuse new work, finish what is queued, then leave `serve`."""
        self._stopping = True

    def _bind(self) -> None:
        path = self.config.address.removeprefix("ipc://")
        if path != self.config.address and os.path.exists(path):
            os.unlink(path)  # left behind by an engine that died on this address
        self._socket.bind(self.config.address)

    def _heartbeat_socket(self) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        address = protocol.heartbeat_address(self.config.address)
        path = address.removeprefix("ipc://")
        if path != address and os.path.exists(path):
            os.unlink(path)
        socket.bind(address)
        return socket

    def _answer_heartbeats(self, socket: zmq.Socket[bytes]) -> None:
        pid = os.getpid()
        while self._serving:
            if not socket.poll(IDLE_POLL_MS):
                continue
            client, frame = socket.recv_multipart()
            try:
                beat = protocol.decode_heartbeat(frame)
            except Exception:  # noqa: BLE001 - a malformed frame must not stop the heartbeat
                continue
            since = self._busy_since
            busy_s = 0.0 if since is None else time.monotonic() - since
            ready = self._state == "ready"
            socket.send_multipart(
                [client, protocol.encode(protocol.HeartbeatReply(beat.sequence, pid, busy_s, ready))]
            )
        socket.close()

    def _load(self) -> None:
        try:
            device = resolve_device(self.config.device)
            dtype = resolve_dtype(self.config.dtype, device)
            model = load_classifier(self.config.model_path, device, dtype)
            self._card = read_model_card(self.config.model_path, model.config)
            # None for a model with no pad token: the runner picks one per batch.
            pad = model.config.get_text_config().pad_token_id
            self.scheduler.max_batch_padding = batch_padding_limit(self.config, device)
            self._runner = ModelRunner(
                model, device, pad, self.config.max_batch_tokens, self.metrics.oom_splits.inc
            )
            self._device, self._dtype = str(device), str(dtype).removeprefix("torch.")
            self._state = "ready"
            log.info(
                "engine for %s ready: %s on %s (%s)",
                self.config.scorer,
                self.config.model_path,
                device,
                dtype,
            )
        except Exception as exc:  # noqa: BLE001 - reported through EngineStatus
            log.exception("engine for %s could not load %s", self.config.scorer, self.config.model_path)
            self._error = f"failed to load {self.config.model_path}: {type(exc).__name__}: {exc}"
            self._state = "failed"

    def _finished(self, in_flight: _InFlight | None) -> bool:
        if os.getppid() != self._parent:
            log.error("engine for %s: the service process is gone; exiting", self.config.scorer)
            return True
        return self._stopping and in_flight is None and not self._batches and not self.scheduler.waiting_items

    def _poll_timeout_ms(self, in_flight: _InFlight | None) -> int:
        if in_flight is not None or self._batches:
            return 0
        oldest = self.scheduler.oldest_arrival()
        if oldest is None:
            return IDLE_POLL_MS
        if (
            self.scheduler.waiting_tokens >= self.config.max_batch_tokens
            or self.scheduler.waiting_items >= self.config.max_batch_items
        ):
            return 0  # a full batch is waiting: more arrivals cannot join it
        # Give concurrent clients up to max_wait_ms to add items to a batch that is not full yet.
        return max(0, int((oldest + self.config.max_wait_ms / 1000 - time.monotonic()) * 1000))

    def _receive(self, timeout_ms: int) -> None:
        if not self._socket.poll(timeout_ms):
            if timeout_ms >= IDLE_POLL_MS and self._ran_since_trim:
                # Idle for a while after some work: give the batches' freed host memory back, so
                # that a burst of long inputs does not leave the process large for good.
                release_freed_memory()
                self._ran_since_trim = False
            return
        while True:
            try:
                client, frame = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                message = protocol.decode_to_engine(frame)
            except Exception:  # noqa: BLE001 - a malformed frame must not stop the engine
                log.exception("engine for %s: undecodable message dropped", self.config.scorer)
                continue
            self._handle(client, message)

    def _handle(self, client: bytes, message: protocol.ToEngine) -> None:
        if isinstance(message, protocol.StatusQuery):
            status = protocol.EngineStatus(
                message.request_id,
                self._state,
                os.getpid(),
                self._device,
                self._dtype,
                self._error,
                self._card,
            )
            self._send(client, status)
        elif isinstance(message, protocol.CancelItems):
            self._cancel(client, message.request_id)
        else:
            self._admit(client, message)

    def _admit(self, client: bytes, message: protocol.ScoreItems) -> None:
        refusal: tuple[FailureKind, str] | None = None
        if self._stopping:
            refusal = ("shutting_down", "the engine is shutting down")
        elif self._state != "ready":
            refusal = (
                "not_ready",
                f"the model is {self._state}" + (f": {self._error}" if self._error else ""),
            )
        if refusal is not None:
            self._send(client, EngineFailure(message.request_id, *refusal))
            return
        token_ids = np.frombuffer(message.token_ids, dtype=protocol.TOKEN_DTYPE)
        if len(token_ids) != sum(message.lengths) or min(message.lengths, default=1) < 1:
            self._send(client, EngineFailure(message.request_id, "model_error", "malformed ScoreItems"))
            return
        now = time.monotonic()
        deadline = now + message.budget_s if message.budget_s > 0 else None
        queued = [
            Queued(r.remaining_tokens, None if r.deadline is None else r.deadline - now)
            for r in self._requests.values()
        ]
        why = self.admission.refusal(len(token_ids), message.budget_s or None, queued)
        if why is not None:
            self.metrics.rejected_deadline.inc(len(message.lengths))
            detail = f"scorer '{self.config.scorer}' cannot score this request before its deadline: {why}"
            self._send(client, EngineFailure(message.request_id, "overloaded", detail))
            return
        request = QueuedRequest(
            client,
            message.request_id,
            token_ids,
            message.lengths,
            deadline=deadline,
            sender_idle=message.sender_idle,
        )
        if not self.scheduler.add(request):
            self.metrics.rejected_queue_full.inc(len(message.lengths))
            detail = (
                f"scorer '{self.config.scorer}' queue is full ({self.scheduler.waiting_items} items waiting)"
            )
            self._send(client, EngineFailure(message.request_id, "overloaded", detail))
            return
        self._requests[request.key] = request

    def _cancel(self, client: bytes, request_id: int) -> None:
        request = self._requests.pop((client, request_id), None)
        if request is None:
            return
        request.cancelled = True
        self.scheduler.cancel(request.key)
        # Items already cut into batches are skipped when their batch comes up.
        self.metrics.abandoned.inc(request.unfinished)

    def _form_window(self) -> None:
        if self._batches or not self.scheduler.waiting_items or self._poll_timeout_ms(None) > 0:
            return
        self._batches.extend(self.scheduler.next_window())

    def _launch_next(self) -> _InFlight | None:
        while self._batches:
            batch = [item for item in self._batches.popleft() if not item.request.cancelled]
            if not batch:
                continue
            assert self._runner is not None
            started = time.monotonic()
            self.metrics.queue_wait.observe(started - min(item.request.arrived for item in batch))
            for item in batch:
                if item.request.first_batch_started is None:
                    item.request.first_batch_started = started
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_tokens.observe(max(item.length for item in batch) * len(batch))
            self._choose_threads()
            try:
                launched = self._runner.launch([item.request.ids(item.index) for item in batch])
            except Exception as exc:  # noqa: BLE001 - the failure belongs to the requests in this batch
                self._fail(batch, exc)
                continue
            self._ran_since_trim = True
            return _InFlight(batch, launched, started)
        return None

    def _choose_threads(self) -> None:
        if self._threads is None:
            return
        every_core = front_end_waits(self._requests.values())
        threads = self._threads.alone if every_core else self._threads.shared
        if threads != self._threads_now:
            torch.set_num_threads(threads)
            self._threads_now = threads
        self.metrics.cpu_batches.labels(self.config.scorer, "all" if every_core else "all_but_one").inc()

    def _complete(self, in_flight: _InFlight) -> None:
        assert self._runner is not None
        try:
            logits = self._runner.collect(in_flight.launched).numpy()
        except Exception as exc:  # noqa: BLE001
            self._fail(in_flight.items, exc)
            return
        finally:
            now = time.monotonic()
            self.metrics.batch_latency.observe(now - in_flight.started)
        # The engine's time for this batch: since it started, or since the one before finished
        # (a GPU runs the next batch while this one is collected).
        self.admission.observe(
            sum(item.length for item in in_flight.items), now - max(in_flight.started, self._last_completed)
        )
        self._last_completed = now
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            self._fail_non_finite(in_flight.items, logits, finite)
        for item, row in zip(in_flight.items, logits, strict=True):
            request = item.request
            request.remaining_tokens -= item.length
            if request.cancelled:
                continue
            if request.logits is None:
                request.logits = np.empty((len(request.lengths), logits.shape[1]), dtype=protocol.LOGIT_DTYPE)
            request.logits[item.index] = row
            request.unfinished -= 1
            if request.unfinished == 0:
                self._requests.pop(request.key, None)
                inference_s = time.monotonic() - (request.first_batch_started or in_flight.started)
                scored = protocol.ScoredItems(
                    request.request_id,
                    request.logits.tobytes(),
                    logits.shape[1],
                    inference_s,
                    self.admission.tokens_per_s or 0.0,
                )
                self._send(request.client, scored)

    def _fail_non_finite(self, items: list[BatchItem], logits: np.ndarray, finite: np.ndarray) -> None:
        """Fail each request with a NaN or inf logit in this batch (an fp16 overflow, broken weights):
        no score can be made of it. The error names its bad inputs in index order."""
        bad: dict[int, tuple[QueuedRequest, list[tuple[int, list[float]]]]] = {}
        for item, row, row_is_finite in zip(items, logits, finite, strict=True):
            if not row_is_finite and not item.request.cancelled:
                bad.setdefault(id(item.request), (item.request, []))[1].append((item.index, row.tolist()))
        for request, inputs in bad.values():
            inputs.sort()
            log.error("engine for %s: non-finite logits for inputs %s", self.config.scorer, inputs)
            named = ", ".join(f"{index} {row}" for index, row in inputs[:NAMED_BAD_INPUTS])
            more = len(inputs) - NAMED_BAD_INPUTS
            self._fail_request(
                request,
                f"the model gave non-finite logits for input{'s' if len(inputs) > 1 else ''} {named}"
                + (f" and {more} more" if more > 0 else "")
                + "; no score is made up for them",
            )

    def _fail(self, batch: list[BatchItem], exc: Exception) -> None:
        log.error("engine for %s failed on a batch of %d items", self.config.scorer, len(batch), exc_info=exc)
        message = f"the model failed on a batch: {type(exc).__name__}: {exc}"
        for request in {id(item.request): item.request for item in batch}.values():
            if not request.cancelled:
                self._fail_request(request, message)
        self._exit_unless_model_answers()

    def _fail_request(self, request: QueuedRequest, message: str) -> None:
        """Answer `request` with the model's failure; its items still queued or batched are dropped."""
        request.cancelled = True
        self.scheduler.cancel(request.key)
        self._requests.pop(request.key, None)
        self._send(request.client, EngineFailure(request.request_id, "model_error", message))

    def _exit_unless_model_answers(self) -> None:
        """After a failed batch, a one-token probe tells a bad input from a broken model or device.

        A broken one (e.g. a CUDA error that poisons the context) cannot heal in this process: exit,
        so the front ends answer 503 and the supervisor starts a fresh engine.
        """
        assert self._runner is not None
        try:
            self._runner.collect(self._runner.launch([np.zeros(1, dtype=protocol.TOKEN_DTYPE)]))
        except Exception:  # noqa: BLE001
            log.critical(
                "engine for %s: the model fails a probe too; exiting to be restarted", self.config.scorer
            )
            raise SystemExit(EXIT_MODEL_BROKEN) from None

    def _send(self, client: bytes, message: protocol.FromEngine) -> None:
        self._socket.send_multipart([client, protocol.encode(message)], copy=False)


@dataclass(frozen=True)
class CpuThreads:
    """A CPU engine's intra-op threads: `shared` while the front end has work of its own (every
    core but one, which HTTP, JSON and tokenization need), `alone` while the front end of the
    engine's only request waits on it (every core).

    torch's default, a thread per core, busy-waits each op's threads on a machine whose cores the
    front end also uses: one descheduled thread stalls the whole op (a tiny model's 16-item batch
    took 200-500 ms with two threads on two loaded cores, 17-27 ms with one). A lone request's
    front end is idle, and its core would be too: with both cores a lone 16-pair forward of the
    tiny stand-in takes 6 ms instead of 9 (docs/benchmarks.md)."""

    shared: int
    alone: int


def cpu_threads(config: EngineConfig) -> CpuThreads | None:
    """The CPU engine's threads. None: leave torch's default (a GPU engine, or OMP_NUM_THREADS set
    by the operator)."""
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if not on_cpu or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0))
    return CpuThreads(shared=max(1, cores - 1), alone=cores)


def front_end_waits(requests: Collection[QueuedRequest]) -> bool:
    """Whether the next batch may run on every core, given every request the engine holds: only
    for a lone request whose front end had nothing else in progress. Two requests, even from idle
    front ends, mean two front-end processes at work (or more work on the way): they keep a core."""
    return len(requests) == 1 and next(iter(requests)).sender_idle


def batch_padding_limit(config: EngineConfig, device: torch.device) -> int | None:
    """The setting if given; else protocol.CPU_BATCH_PADDING_TOKENS on a CPU and no limit on a GPU,
    where each batch costs its kernel launches and a batch of many short items is cheap per token."""
    if config.max_batch_padding_tokens is not None:
        return config.max_batch_padding_tokens
    return protocol.CPU_BATCH_PADDING_TOKENS if device.type == "cpu" else None


def run_engine(config: EngineConfig) -> None:
    """Serve until SIGTERM (then finish queued work) or until the parent process is gone."""
    torch.set_grad_enabled(False)
    threads = cpu_threads(config)
    if threads is not None:
        torch.set_num_threads(threads.shared)
    engine = EngineCore(config, threads)
    signal.signal(signal.SIGTERM, lambda *_: engine.stop())
    # Ctrl-C in a terminal reaches the whole process group: the front end decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine.serve()
