"""MicroBatcher: merges items from concurrent requests into model batches under a token budget.

One asyncio task owns the queue. Requests append their items and await a future; the task waits up
to `max_wait_ms` for more items, takes everything pending (up to a window), sorts it by length so
that similar lengths share a batch (less padding), cuts it into batches whose padded size fits the
token budget, and runs each batch in a single worker thread so the event loop keeps accepting
requests while the model runs. Each item is computed independently of its batch-mates (padding is
masked), so a request's scores do not depend on what it was batched with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from reward_service.errors import Overloaded
from reward_service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Request(Generic[ResultT]):
    future: asyncio.Future[list[ResultT]]
    results: list[ResultT | None]
    remaining: int

    def done(self) -> bool:
        return self.future.done()


@dataclass
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    cost: int
    request: _Request[ResultT]
    index: int


@dataclass
class BatchLimits:
    max_batch_tokens: int
    max_batch_items: int
    max_wait_ms: float
    queue_capacity: int
    retry_after_s: int = 1


@dataclass
class MicroBatcher(Generic[ItemT, ResultT]):
    """Batches items for `run_batch`, which maps a list of items to a list of results."""

    name: str
    run_batch: Callable[[list[ItemT]], list[ResultT]]
    cost: Callable[[ItemT], int]
    limits: BatchLimits
    metrics: ServiceMetrics
    _pending: deque[_Entry[ItemT, ResultT]] = field(default_factory=deque)
    # Kept with the deque so that checking the token budget on every wake-up is O(1), not a sum.
    _pending_cost: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{self.name}")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for entry in self._pending:
            if not entry.request.done():
                entry.request.future.set_exception(Overloaded("the service is shutting down", 1))
        self._pending.clear()
        self._pending_cost = 0
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Queue `items` and wait for their results, in the same order."""
        if not items:
            return []
        if len(self._pending) + len(items) > self.limits.queue_capacity:
            self.metrics.rejected.labels(self.name).inc(len(items))
            raise Overloaded(
                f"scorer '{self.name}' queue is full ({len(self._pending)} items waiting)",
                self.limits.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        request: _Request[ResultT] = _Request(loop.create_future(), [None] * len(items), len(items))
        for index, item in enumerate(items):
            entry = _Entry(item, self.cost(item), request, index)
            self._pending.append(entry)
            self._pending_cost += entry.cost
        self.metrics.queue_depth.labels(self.name).set(len(self._pending))
        self._wakeup.set()
        # If the caller is cancelled (client went away), the future is cancelled with it and the
        # loop skips the request's remaining items.
        return await request.future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._wait_for_more()
            window = self._take_window()
            self.metrics.queue_depth.labels(self.name).set(len(self._pending))
            for batch in self._cut_batches(window):
                await self._run(batch)
            if self._pending:
                self._wakeup.set()

    async def _wait_for_more(self) -> None:
        """Give concurrent clients `max_wait_ms` to add items, unless a batch is already full."""
        deadline = time.monotonic() + self.limits.max_wait_ms / 1000
        while self._pending_cost < self.limits.max_batch_tokens:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            self._wakeup.clear()

    def _take_window(self) -> list[_Entry[ItemT, ResultT]]:
        # A window of a few batches' worth, so that sorting by length has something to sort while
        # later arrivals still get their turn.
        window_items = 4 * self.limits.max_batch_items
        window: list[_Entry[ItemT, ResultT]] = []
        abandoned = 0
        while self._pending and len(window) < window_items:
            entry = self._pending.popleft()
            self._pending_cost -= entry.cost
            if entry.request.done():
                abandoned += 1
                continue
            window.append(entry)
        if abandoned:
            self.metrics.abandoned.labels(self.name).inc(abandoned)
        return window

    def _cut_batches(self, window: list[_Entry[ItemT, ResultT]]) -> list[list[_Entry[ItemT, ResultT]]]:
        batches: list[list[_Entry[ItemT, ResultT]]] = []
        current: list[_Entry[ItemT, ResultT]] = []
        for entry in sorted(window, key=lambda e: e.cost):
            # Sorted ascending, so this entry is the longest: the padded size is its cost x count.
            padded = entry.cost * (len(current) + 1)
            if current and (
                padded > self.limits.max_batch_tokens or len(current) >= self.limits.max_batch_items
            ):
                batches.append(current)
                current = []
            current.append(entry)
        if current:
            batches.append(current)
        return batches

    async def _run(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        batch = [e for e in batch if not e.request.done()]
        if not batch:
            return
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        self.metrics.batch_tokens.labels(self.name).observe(batch[-1].cost * len(batch))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [e.item for e in batch])
        except Exception as exc:  # noqa: BLE001 - the failure belongs to the requests in this batch
            log.exception("scorer %s failed on a batch of %d items", self.name, len(batch))
            for entry in batch:
                if not entry.request.done():
                    entry.request.future.set_exception(exc)
            return
        finally:
            self.metrics.batch_latency.labels(self.name).observe(time.perf_counter() - started)
        for entry, result in zip(batch, results, strict=True):
            request = entry.request
            if request.done():
                continue
            request.results[entry.index] = result
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(list(request.results))  # type: ignore[arg-type]
