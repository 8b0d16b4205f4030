"""The load driver: C concurrent clients x R requests of P query/response pairs against one service.

It counts errors, lost or wrong scores (each compared with the text's score alone) and the 503s the
client absorbed (from the service's `/metrics`), and measures latency percentiles. Used by
`tests/test_reliability_load.py` and `python -m bench.load_test`.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass

import httpx

from shared import RetryPolicy, RewardClient


@dataclass
class LoadReport:
    clients: int
    requests: int
    items: int
    errors: int
    wrong_scores: int
    rejected_503: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed_s

    def lines(self) -> list[str]:
        return [
            f"clients={self.clients} requests={self.requests} items={self.items}",
            f"errors={self.errors} ({self.first_error or 'none'})",
            f"wrong_or_lost_scores={self.wrong_scores} absorbed_503={self.rejected_503}",
            f"elapsed={self.elapsed_s:.1f}s throughput={self.requests_per_s:.0f} req/s "
            f"({self.items_per_s:.0f} items/s) p50={self.p50_ms:.1f}ms p99={self.p99_ms:.1f}ms",
        ]


def pair_pool(n_queries: int = 40, n_responses: int = 25, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = "thank you kind help hate stupid lovely day you are terrible nice awful friend go away".split()
    queries = [
        "Summarize the following conversation. Human: "
        + " ".join(rng.choices(words, k=rng.randint(3, 40)))
        + " Summary:"
        for _ in range(n_queries)
    ]
    responses = [" " + " ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(n_responses)]
    return [(q, r) for q in queries for r in responses]


def run_load(
    url: str,
    expected: dict[str, float],
    pool: list[tuple[str, str]],
    clients: int = 8,
    requests_per_client: int = 500,
    pairs_per_request: int = 16,
    tolerance: float = 1e-4,
) -> LoadReport:
    """Drive the service from `clients` threads; `expected` maps query+response to its lone score."""
    latencies: list[float] = []
    counts = {"errors": 0, "wrong": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    retry = RetryPolicy(max_attempts=10_000, max_total_s=120, initial_backoff_s=0.01, max_backoff_s=0.2)

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with RewardClient(url, retry=retry, max_items_per_request=pairs_per_request) as client:
            for _ in range(requests_per_client):
                pairs = rng.sample(pool, pairs_per_request)
                started = time.perf_counter()
                try:
                    scores = client.score(
                        queries=[q for q, _ in pairs], responses=[r for _, r in pairs]
                    ).scores
                except Exception as exc:  # noqa: BLE001 - counted, and the caller asserts there were none
                    with lock:
                        counts["errors"] += 1
                        first_error.append(repr(exc))
                    continue
                elapsed = time.perf_counter() - started
                wrong = sum(
                    1 for (q, r), s in zip(pairs, scores, strict=True) if abs(s - expected[q + r]) > tolerance
                ) + abs(len(scores) - len(pairs))
                with lock:
                    latencies.append(elapsed)
                    counts["wrong"] += wrong

    before = _rejections(url)
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    total = clients * requests_per_client
    return LoadReport(
        clients=clients,
        requests=total,
        items=total * pairs_per_request,
        errors=counts["errors"],
        wrong_scores=counts["wrong"],
        rejected_503=int(_rejections(url) - before),
        elapsed_s=elapsed,
        p50_ms=1000 * statistics.median(latencies) if latencies else float("nan"),
        p99_ms=1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        first_error=first_error[0] if first_error else None,
    )


def _rejections(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("reward_requests_total") and 'status="503"' in line
    )
