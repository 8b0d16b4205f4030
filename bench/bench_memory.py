"""What large requests cost the service in memory: resident set size before, at peak and after.

Starts `python -m reward_service` (tiny stand-in, CPU), sends `--requests` requests of `--items`
texts of `--chars` characters each, `--concurrency` at a time, while sampling the RSS of the
service's processes (front end and engines) every 20 ms; then waits `--settle-s` and samples again.

    python -m bench.bench_memory          # 20 requests of 1,024 x 10,000 characters, 4 at a time
    python -m bench.bench_memory --route get_reward --items 2048   # whole OpenRLHF rollouts
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from bench.stand_ins import STEADY_STATE_ENV, build_classifier, docstring_corpus
from demo.run import running_service


def rss_by_process_mb(pid: int) -> dict[str, float]:
    """RSS of the service's front end and of its engines (summed)."""
    process = psutil.Process(pid)
    sizes = {"front end": 0.0, "engines": 0.0}
    for p in [process, *process.children(recursive=True)]:
        try:
            is_engine = "reward_service.engine" in " ".join(p.cmdline())
            sizes["engines" if is_engine else "front end"] += p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return sizes


def tree_rss_mb(pid: int) -> float:
    return sum(rss_by_process_mb(pid).values())


def long_texts(n: int, chars: int, seed: int) -> list[str]:
    prose = " ".join(docstring_corpus())
    rng = random.Random(seed)
    starts = [rng.randrange(len(prose) - chars) for _ in range(n)]
    return [prose[s : s + chars] for s in starts]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--items", type=int, default=1024)
    parser.add_argument("--chars", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument(
        "--route",
        choices=["score", "get_reward"],
        default="score",
        help="/score {texts}, or OpenRLHF's /get_reward {query, prompts, labels} (scored in windows)",
    )
    args = parser.parse_args()

    model = build_classifier("tiny")
    texts = [long_texts(args.items, args.chars, seed) for seed in range(args.concurrency)]
    if args.route == "score":
        bodies: list[dict[str, object]] = [{"texts": t} for t in texts]
    else:
        bodies = [{"query": t, "prompts": [q[:200] for q in t], "labels": list(range(len(t)))} for t in texts]
    peak = 0.0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, tree_rss_mb(service.pid))
            time.sleep(0.02)

    with running_service(model, Path(tempfile.gettempdir()) / "bench-memory.log", STEADY_STATE_ENV) as (
        url,
        service,
    ):
        with httpx.Client(timeout=600) as client:  # one small request: everything is loaded
            client.post(url + "/score", json={"texts": ["warm-up"]}).raise_for_status()
        time.sleep(1.0)
        start_parts = rss_by_process_mb(service.pid)
        start = sum(start_parts.values())
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        truncated: list[int] = []

        def send(i: int) -> None:
            # A long deadline: this measures memory, and a busy machine must not turn it into 504s.
            answer = httpx.post(
                url + "/" + args.route,
                json=bodies[i % len(bodies)],
                headers={"X-Reward-Timeout-Ms": "590000"},
                timeout=600,
            )
            answer.raise_for_status()
            # /get_reward does not report truncation: count the rewards instead.
            truncated.append(answer.json().get("truncated", len(answer.json().get("rewards", []))))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(send, range(args.requests)))
        elapsed = time.perf_counter() - started
        sampling = False
        sampler.join()
        time.sleep(args.settle_s)
        final_parts = rss_by_process_mb(service.pid)
        final = sum(final_parts.values())
    print(
        f"{args.requests} /{args.route} requests of {args.items} x {args.chars} characters, "
        f"{args.concurrency} at a time, "
        f"in {elapsed:.1f}s"
    )
    print(f"{'truncated' if args.route == 'score' else 'rewards'} per request: {sorted(set(truncated))}")
    print(f"RSS of the service's processes: start {start:.0f} MB, peak {peak:.0f} MB (+{peak - start:.0f}),")
    print(f"  {args.settle_s:.0f}s after the last answer {final:.0f} MB (+{final - start:.0f})")
    for part in start_parts:
        print(f"  {part}: start {start_parts[part]:.0f} MB, after {final_parts[part]:.0f} MB")


if __name__ == "__main__":
    main()
