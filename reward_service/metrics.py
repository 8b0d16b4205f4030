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
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Refusals are counted where they are decided: by the front end before tokenizing, by an engine on
# arrival. Both count under this one name, documentation and labels, and /metrics shows one series
# per scorer and reason.
REJECTED_ITEMS = "reward_rejected_items"
REJECTED_ITEMS_HELP = (
    "Items refused with 503, by reason: queue_full (the scorer's queue had no room) or deadline "
    "(they could not be scored before the request's deadline)."
)
REJECTED_ITEMS_LABELS = ("scorer", "reason")


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
        self.rejected = Counter(REJECTED_ITEMS, REJECTED_ITEMS_HELP, REJECTED_ITEMS_LABELS, registry=r)

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
        return generate_latest(_OneFamilyPerName(self.registry))


class _OneFamilyPerName:
    """The registry's families, those of the same name merged and their samples of one series
    summed: this process and its engines both count `REJECTED_ITEMS`, and Prometheus refuses a
    family that appears twice. (With several workers, MultiProcessCollector merges them itself.)"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for family in self._registry.collect():
            families.setdefault(family.name, family)
            samples = series.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                known = samples.get(key)
                samples[key] = sample if known is None else known._replace(value=known.value + sample.value)
        for name, family in families.items():
            family.samples = list(series[name].values())
        return list(families.values())
