"""FairScheduler: which queued items the engine runs next, in which batches.

Items wait in one queue per request. A scheduling window is filled round-robin across the waiting
requests (one item from each in turn), so a 1,024-item request from one trainer cannot hold a
16-item request from another behind all of its batches: every waiting request has items in every
window. The window is then sorted by length (similar lengths share a batch: little padding) and cut
into batches whose padded size (longest item x items) fits the token budget and, where a limit is
set, whose padding (padded size - real tokens) stays under it: on a CPU, padding costs as much as
real tokens while another batch costs little. Pure Python and numpy: the engine loop owns it and
calls it between batches.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# A window holds a few batches' worth, so that sorting by length has something to sort while
# requests that arrive meanwhile wait at most one window.
WINDOW_BATCHES = 4


@dataclass(eq=False)
class QueuedRequest:
    """One `ScoreItems` message: its token ids, and its logits as batches finish."""

    client: bytes
    request_id: int
    token_ids: np.ndarray
    lengths: list[int]
    arrived: float = field(default_factory=time.monotonic)
    first_batch_started: float | None = None
    offsets: list[int] = field(init=False)
    waiting: deque[int] = field(init=False)
    logits: np.ndarray | None = None
    unfinished: int = field(init=False)
    cancelled: bool = False
    # When the front end stops waiting for it (`time.monotonic()` of this process), if it said.
    deadline: float | None = None
    # Tokens of the items not scored yet.
    remaining_tokens: int = field(init=False)
    # Its front end had nothing else in progress when it sent it (`protocol.ScoreItems`).
    sender_idle: bool = False

    def __post_init__(self) -> None:
        self.offsets = np.concatenate(([0], np.cumsum(self.lengths[:-1], dtype=np.int64))).tolist()
        self.waiting = deque(range(len(self.lengths)))
        self.unfinished = len(self.lengths)
        self.remaining_tokens = sum(self.lengths)

    @property
    def key(self) -> tuple[bytes, int]:
        return self.client, self.request_id

    def ids(self, index: int) -> np.ndarray:
        start = self.offsets[index]
        return self.token_ids[start : start + self.lengths[index]]


@dataclass(eq=False)
class BatchItem:
    request: QueuedRequest
    index: int
    length: int


class FairScheduler:
    def __init__(
        self,
        max_batch_tokens: int,
        max_batch_items: int,
        queue_capacity: int,
        max_batch_padding: int | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_items = max_batch_items
        self.queue_capacity = queue_capacity
        self.max_batch_padding = max_batch_padding
        # Requests with items not yet in a window, in round-robin order.
        self._waiting: dict[tuple[bytes, int], QueuedRequest] = {}
        self.waiting_items = 0
        self.waiting_tokens = 0

    def add(self, request: QueuedRequest) -> bool:
        """Queue a request's items; False (nothing queued) if the queue has no room for all of them."""
        if self.waiting_items + len(request.lengths) > self.queue_capacity:
            return False
        self._waiting[request.key] = request
        self.waiting_items += len(request.lengths)
        self.waiting_tokens += sum(request.lengths)
        return True

    def cancel(self, key: tuple[bytes, int]) -> QueuedRequest | None:
        """Forget a request's waiting items; items already in a window are skipped by the engine."""
        request = self._waiting.pop(key, None)
        if request is not None:
            self._forget(request, request.waiting)
            request.waiting.clear()
        return request

    def oldest_arrival(self) -> float | None:
        return min((r.arrived for r in self._waiting.values()), default=None)

    def next_window(self) -> list[list[BatchItem]]:
        """Take up to a window of items, round-robin across requests; return it cut into batches."""
        window: list[BatchItem] = []
        window_items = WINDOW_BATCHES * self.max_batch_items
        window_tokens = WINDOW_BATCHES * self.max_batch_tokens
        tokens = 0
        served: list[tuple[bytes, int]] = []
        while self._waiting and len(window) < window_items and tokens < window_tokens:
            served = []
            for key, request in list(self._waiting.items()):
                index = request.waiting.popleft()
                length = request.lengths[index]
                window.append(BatchItem(request, index, length))
                tokens += length
                served.append(key)
                if not request.waiting:
                    del self._waiting[key]
                if len(window) >= window_items or tokens >= window_tokens:
                    break
        # Whoever was served in the last (maybe partial) round goes to the back of the line, so the
        # next window starts with the requests that round did not reach.
        for key in served:
            if key in self._waiting:
                self._waiting[key] = self._waiting.pop(key)
        self.waiting_items -= len(window)
        self.waiting_tokens -= tokens
        return self._cut(window)

    def _cut(self, window: list[BatchItem]) -> list[list[BatchItem]]:
        batches: list[list[BatchItem]] = []
        current: list[BatchItem] = []
        real = 0
        padding_limit = self.max_batch_padding
        for item in sorted(window, key=lambda i: i.length):
            # Sorted ascending, so this item is the longest: the padded size is its length x count.
            padded = item.length * (len(current) + 1)
            if current and (
                padded > self.max_batch_tokens
                or len(current) >= self.max_batch_items
                or (padding_limit is not None and padded - real - item.length > padding_limit)
            ):
                batches.append(current)
                current, real = [], 0
            current.append(item)
            real += item.length
        if current:
            batches.append(current)
        return batches

    def _forget(self, request: QueuedRequest, indices: deque[int]) -> None:
        self.waiting_items -= len(indices)
        self.waiting_tokens -= sum(request.lengths[i] for i in indices)
