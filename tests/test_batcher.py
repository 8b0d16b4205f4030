"""MicroBatcher on its own: merging, token budget, ordering, failures, abandoned requests."""

from __future__ import annotations

import asyncio
import time

import pytest

from reward_service.batcher import BatchLimits, MicroBatcher
from reward_service.errors import Overloaded
from reward_service.metrics import ServiceMetrics


def make(run, **limits: float) -> MicroBatcher[str, str]:
    defaults = {"max_batch_tokens": 1000, "max_batch_items": 64, "max_wait_ms": 20, "queue_capacity": 1000}
    return MicroBatcher("t", run, len, BatchLimits(**{**defaults, **limits}), ServiceMetrics())


def test_concurrent_requests_are_merged_and_each_gets_its_own_results_in_order() -> None:
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(items)
        return [item.upper() for item in items]

    async def main() -> list[list[str]]:
        batcher = make(run)
        batcher.start()
        requests = [[f"r{r}i{i}" + "x" * (i % 3) for i in range(5)] for r in range(10)]
        results = await asyncio.gather(*(batcher.submit(req) for req in requests))
        await batcher.stop()
        for req, res in zip(requests, results, strict=True):
            assert res == [item.upper() for item in req]
        return batches

    asyncio.run(main())
    assert len(batches) < 10  # 10 requests of 5 items ran in fewer batches than requests
    assert max(len(b) for b in batches) > 5


def test_batches_respect_the_token_budget_and_are_sorted_by_length() -> None:
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[int]:
        batches.append(items)
        return [len(item) for item in items]

    async def main() -> list[int]:
        batcher = make(run, max_batch_tokens=40, max_batch_items=8)
        batcher.start()
        items = ["a" * n for n in (9, 1, 20, 3, 3, 8, 1, 2, 15, 4)]
        result = await batcher.submit(items)
        await batcher.stop()
        return result

    assert asyncio.run(main()) == [9, 1, 20, 3, 3, 8, 1, 2, 15, 4]
    for batch in batches:
        assert max(map(len, batch)) * len(batch) <= 40 or len(batch) == 1
        assert [len(x) for x in batch] == sorted(len(x) for x in batch)


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving() -> None:
    def run(items: list[str]) -> list[str]:
        if "boom" in items:
            raise RuntimeError("model exploded")
        return items

    async def main() -> None:
        batcher = make(run, max_wait_ms=0)
        batcher.start()
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit(["boom"])
        assert await batcher.submit(["fine"]) == ["fine"]
        await batcher.stop()

    asyncio.run(main())


def test_full_queue_is_refused_with_overloaded() -> None:
    def run(items: list[str]) -> list[str]:
        time.sleep(0.3)
        return items

    async def main() -> None:
        batcher = make(run, queue_capacity=3, max_wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["a", "b", "c"]))
        await asyncio.sleep(0.05)  # taken into a batch: the queue is empty again
        second = asyncio.create_task(batcher.submit(["d", "e"]))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(["f", "g"])
        assert await first == ["a", "b", "c"] and await second == ["d", "e"]
        await batcher.stop()

    asyncio.run(main())


def test_items_of_a_cancelled_request_are_not_computed() -> None:
    computed: list[str] = []

    def run(items: list[str]) -> list[str]:
        computed.extend(items)
        time.sleep(0.2)
        return items

    async def main() -> None:
        batcher = make(run, max_wait_ms=0)
        batcher.start()
        busy = asyncio.create_task(batcher.submit(["busy"]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit(["gone-1", "gone-2"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while its items were queued
        await busy
        assert await batcher.submit(["after"]) == ["after"]
        await batcher.stop()

    asyncio.run(main())
    assert "gone-1" not in computed and "gone-2" not in computed
