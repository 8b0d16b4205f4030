"""A small thread-safe LRU map from a judge's inputs to its number."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class ScoreCache:
    """Least-recently-used scores; `max_items=0` keeps nothing."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[Hashable, float] = OrderedDict()
        # Worker threads and the event loop both touch it.
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> float | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: float) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
