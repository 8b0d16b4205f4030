"""Soak: mixed load on one service for a long time, watching its memory (a leak grows, an allocator
levels off).

`--clients` threads send, in a loop: requests of 1 to 64 query/response pairs, now and then 256
texts of 10,000 characters (cut to the window), now and then an invalid request (422). The RSS of
the service's processes (front end and engines) is printed every `--every-s` seconds.

    python -m bench.soak --minutes 30
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.bench_memory import long_texts, tree_rss_mb
from bench.stand_ins import build_classifier
from demo.run import running_service


def client_loop(url: str, seed: int, until: float, counts: dict[str, int], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    long = long_texts(256, 10_000, seed)
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.05:
                body: dict[str, object] = {"texts": long}
            elif roll < 0.10:
                body = {"texts": [], "unknown": 1}
            else:
                n = rng.randint(1, 64)
                body = {
                    "queries": [
                        f"Summarize conversation {rng.random()}. " * rng.randint(1, 20) for _ in range(n)
                    ],
                    "responses": [" thank you kind friend" * rng.randint(1, 10) for _ in range(n)],
                }
            status = client.post("/score", json=body).status_code
            with lock:
                counts[str(status)] = counts.get(str(status), 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every-s", type=float, default=60)
    args = parser.parse_args()

    model = build_classifier("tiny")
    counts: dict[str, int] = {}
    lock = threading.Lock()
    with running_service(model, Path(tempfile.gettempdir()) / "bench-soak.log") as (url, service):
        start = tree_rss_mb(service.pid)
        print(f"t=0 min rss={start:.0f} MB", flush=True)
        until = time.monotonic() + args.minutes * 60
        threads = [
            threading.Thread(target=client_loop, args=(url, seed, until, counts, lock))
            for seed in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        while any(thread.is_alive() for thread in threads):
            time.sleep(args.every_s)
            with lock:
                done = dict(counts)
            minutes = (time.monotonic() - began) / 60
            print(f"t={minutes:.0f} min rss={tree_rss_mb(service.pid):.0f} MB answers={done}", flush=True)
        for thread in threads:
            thread.join()
    statuses = set(counts) - {"200", "422"}
    print(f"answers by status: {counts}; unexpected statuses: {sorted(statuses) or 'none'}")


if __name__ == "__main__":
    main()
