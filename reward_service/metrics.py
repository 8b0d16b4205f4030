"""Prometheus metrics. Each app has its own registry so several apps can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reward_requests",
            "Scoring requests by route, scorer and HTTP status.",
            ["route", "scorer", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "reward_request_latency_seconds",
            "Time from request to scores.",
            ["scorer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter("reward_items", "Inputs scored.", ["scorer"], registry=r)
        self.truncated = Counter(
            "reward_truncated_items", "Inputs cut to the model's window.", ["scorer"], registry=r
        )
        self.batch_size = Histogram(
            "reward_batch_size", "Items per model batch.", ["scorer"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "reward_batch_tokens",
            "Padded tokens per model batch.",
            ["scorer"],
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
            registry=r,
        )
        self.batch_latency = Histogram(
            "reward_batch_latency_seconds",
            "Model time per batch.",
            ["scorer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("reward_queue_depth", "Items waiting for a batch.", ["scorer"], registry=r)
        self.rejected = Counter(
            "reward_rejected_items", "Items refused because the queue was full.", ["scorer"], registry=r
        )
        self.abandoned = Counter(
            "reward_abandoned_items",
            "Queued items dropped because their client went away.",
            ["scorer"],
            registry=r,
        )
        self.oom_splits = Counter(
            "reward_oom_splits", "Batches split after running out of GPU memory.", ["scorer"], registry=r
        )
        self.judge_calls = Counter(
            "reward_judge_calls",
            "Texts sent to an LLM judge, by outcome (ok, or why it failed: AWS error code, content_filtered, "
            "malformed, ...).",
            ["scorer", "outcome"],
            registry=r,
        )
        self.judge_retries = Counter(
            "reward_judge_retries", "Retries after botocore's own retries gave up.", ["scorer"], registry=r
        )
        self.cache_hits = Counter(
            "reward_cache_hits", "Texts answered from a scorer's cache.", ["scorer"], registry=r
        )
