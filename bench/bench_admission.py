"""Goodput under overload: C clients at once, each sending R max-size requests, against one service.

Unloaded first: one request alone gives the scored items per second the service can deliver.
Then C clients send R requests each, all at once, with the deadline the shared client sends
(`X-Reward-Timeout-Ms`). Printed: how many were scored (200), refused up front (503, and how long
the refusal took: at the client, and in the service by its `x-total-time` header, which starts once
the request's headers have arrived), or ran past their deadline (504); the share of admitted
requests (not refused) that succeeded; and goodput, the items of the 200s per second of wall time,
next to the unloaded rate.

    python -m bench.bench_admission --stand-in tiny --clients 8 --requests 2 --texts 1024 --chars 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.stand_ins import STEADY_STATE_ENV, build_classifier
from demo.run import running_service


def one_request(url: str, body: bytes, timeout_ms: int) -> tuple[int, float, float]:
    """Status, seconds at the client, seconds in the service (its x-total-time)."""
    started = time.monotonic()
    response = httpx.post(
        url + "/score",
        content=body,
        headers={"X-Reward-Timeout-Ms": str(timeout_ms), "Content-Type": "application/json"},
        timeout=timeout_ms / 1000 + 30,
    )
    served_s = int(response.headers.get("x-total-time", "0")) / 1000
    return response.status_code, time.monotonic() - started, served_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stand-in", default="tiny", choices=["tiny", "deep-narrow", "roberta-base"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--timeout-ms", type=int, default=60_000)
    args = parser.parse_args()

    model = build_classifier(args.stand_in)
    words = "the quick brown fox jumps over a lazy dog while rivers run to the sea ".split()
    text = " ".join(words[i % len(words)] for i in range(args.chars // 4))[: args.chars]
    env = {
        "REWARD_MAX_ITEMS_PER_REQUEST": str(max(1024, args.texts)),
        "REWARD_QUEUE_CAPACITY": "65536",
        **STEADY_STATE_ENV,
    }
    log = Path(tempfile.gettempdir()) / "bench-admission.log"
    with running_service(Path(model), log, env, timeout_s=300) as (url, _):
        # Distinct texts per request, so no cache or batch-mate effect flatters a figure. Encoded
        # before the clock starts: the clients' own JSON encoding is not the service's time.
        def body(tag: str) -> bytes:
            return json.dumps(
                {"texts": [f"{tag} {i} {text}"[: args.chars] for i in range(args.texts)]}
            ).encode()

        status, alone_s, _ = one_request(url, body("alone"), args.timeout_ms)
        assert status == 200, status
        unloaded = args.texts / alone_s
        bodies = {(c, r): body(f"c{c} r{r}") for c in range(args.clients) for r in range(args.requests)}

        def client(index: int) -> list[tuple[int, float, float]]:
            return [one_request(url, bodies[index, r], args.timeout_ms) for r in range(args.requests)]

        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(client, range(args.clients)) for r in rs]
        wall_s = time.monotonic() - started

    counts = Counter(status for status, _, _ in results)
    scored = counts[200] * args.texts
    refusals = [seconds for status, seconds, _ in results if status == 503]
    served = [seconds for status, _, seconds in results if status == 503]
    admitted = len(results) - counts[503]
    shape = f"{args.clients} clients x {args.requests} requests of {args.texts} x {args.chars} chars"
    print(f"stand-in {args.stand_in}: {shape}")
    print(f"unloaded: one request {alone_s:.1f} s, {unloaded:.0f} items/s")
    print(f"loaded: {dict(sorted(counts.items()))} in {wall_s:.1f} s")
    if refusals:
        print(
            f"503 answered after median {statistics.median(refusals):.2f} s, max {max(refusals):.2f} s "
            f"(in the service: median {statistics.median(served):.2f} s, max {max(served):.2f} s)"
        )
    if admitted:
        print(f"admitted {admitted}, of which {counts[200]} succeeded ({counts[200] / admitted:.2f})")
    print(f"goodput {scored / wall_s:.0f} items/s ({scored / wall_s / unloaded:.2f} of unloaded)")


if __name__ == "__main__":
    main()
