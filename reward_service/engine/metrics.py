"""The engine's Prometheus metrics, written in prometheus-client's multiprocess mode.

The supervisor starts every engine with `PROMETHEUS_MULTIPROC_DIR` set, so these values land in
files that the front end's `/metrics` reads and sums over engines (and over front-end workers).
Names and labels are the ones the service had before the engine moved out of the front end.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from reward_service.metrics import (
    LATENCY_BUCKETS,
    REJECTED_ITEMS,
    REJECTED_ITEMS_HELP,
    REJECTED_ITEMS_LABELS,
    SIZE_BUCKETS,
    TOKEN_BUCKETS,
)


class EngineMetrics:
    def __init__(self, scorer: str) -> None:
        self.batch_size = Histogram(
            "reward_batch_size", "Items per model batch.", ["scorer"], buckets=SIZE_BUCKETS
        ).labels(scorer)
        self.batch_tokens = Histogram(
            "reward_batch_tokens", "Padded tokens per model batch.", ["scorer"], buckets=TOKEN_BUCKETS
        ).labels(scorer)
        self.batch_latency = Histogram(
            "reward_batch_latency_seconds",
            "Device time per batch: from launch until its logits are on the host.",
            ["scorer"],
            buckets=LATENCY_BUCKETS,
        ).labels(scorer)
        self.queue_wait = Histogram(
            "reward_batch_queue_wait_seconds",
            "Per batch: how long its oldest item waited in the engine's queue.",
            ["scorer"],
            buckets=LATENCY_BUCKETS,
        ).labels(scorer)
        self.queue_depth = Gauge(
            "reward_queue_depth",
            "Items waiting for a batch, summed over live engines.",
            ["scorer"],
            multiprocess_mode="livesum",
        ).labels(scorer)
        rejected = Counter(REJECTED_ITEMS, REJECTED_ITEMS_HELP, REJECTED_ITEMS_LABELS)
        self.rejected_queue_full = rejected.labels(scorer, "queue_full")
        self.rejected_deadline = rejected.labels(scorer, "deadline")
        self.abandoned = Counter(
            "reward_abandoned_items", "Queued items dropped because their client went away.", ["scorer"]
        ).labels(scorer)
        self.cpu_batches = Counter(
            "reward_cpu_batches",
            "CPU batches by the cores they ran on: 'all' while the engine's only request's front end "
            "waits on it, else 'all_but_one'.",
            ["scorer", "cores"],
        )
        self.oom_splits = Counter(
            "reward_oom_splits", "Batches split after running out of GPU memory.", ["scorer"]
        ).labels(scorer)
