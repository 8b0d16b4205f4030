"""Prometheus metrics of the front end, and the /metrics exposition that adds the engines' own.

Each app has its own registry so several apps can live in one process (tests). Engines write their
figures (batches, queue, device time) in prometheus-client's multiprocess mode into a directory;
`exposition()` reads those files and sums them over engines. With several front-end workers
(`PROMETHEUS_MULTIPROC_DIR` set by `reward-service --workers N`), the workers' figures go to the
same directory and are summed the same way.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._engine_dirs: list[str] = []
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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter("reward_items", "Inputs scored.", ["scorer"], registry=r)
        self.truncated = Counter(
            "reward_truncated_items", "Inputs cut to the model's window.", ["scorer"], registry=r
        )
        self.judge_calls = Counter(
            "reward_judge_calls",
            "Texts sent to an LLM judge, by outcome (ok, or why it failed: AWS error code, content_filtered, "
            "malformed, ...).",
            ["scorer", "outcome"],
            registry=r,
        )
        self.judge_retries = Counter(
            "reward_judge_retries",
            "Retries of a text by the judge (botocore makes one attempt).",
            ["scorer"],
            registry=r,
        )
        self.cache_hits = Counter(
            "reward_cache_hits", "Texts answered from a scorer's cache.", ["scorer"], registry=r
        )

    def add_engine_metrics(self, directory: str) -> None:
        """Export the figures that engines write into `directory`."""
        if directory not in self._engine_dirs and os.environ.get(MULTIPROCESS_ENV) != directory:
            self._engine_dirs.append(directory)
            MultiProcessCollector(self.registry, path=directory)

    def exposition(self) -> bytes:
        shared = os.environ.get(MULTIPROCESS_ENV)
        if shared:
            # Several front-end workers: this process's own values are in the shared files too.
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=shared)
            return generate_latest(registry)
        return generate_latest(self.registry)
