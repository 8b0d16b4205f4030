"""Throughput of the Bedrock judge against the local fake Bedrock with a fixed per-call latency.

Run from the repository root:  python -m bench.bench_bedrock [--texts 256 --concurrency 32 --latency 0.3]
With `--throttle-every 3`, every third call the fake receives is refused with ThrottlingException
(429), as a Bedrock quota does, and the judge's retries must still score every text.

Scores one batch of distinct texts through BedrockJudge (real boto3: signing, connection pool, parsing)
and compares the time with the ideal ceil(texts / concurrency) x latency. A warm-up batch first opens
the connection pool, as a running service would have.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import tempfile
import time

from harness.fake_bedrock import Handler, Reply, article_judge, error_reply, running_fake_bedrock
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions
from reward_service.scorers.bedrock import BedrockJudge
from reward_service.settings import ServiceSettings


def use_dummy_aws_credentials() -> None:
    """The fake accepts any signature; keep the machine's own AWS configuration out of it."""
    empty = os.path.join(tempfile.gettempdir(), "bench-bedrock-no-aws-config")
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHMARK",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=empty,
        AWS_SHARED_CREDENTIALS_FILE=empty,
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)


async def timed_batch(judge: BedrockJudge, texts: list[str]) -> float:
    started = time.perf_counter()
    output = await judge.score(texts, ScoreOptions(truncation_side="left"))
    elapsed = time.perf_counter() - started
    assert len(output.scores) == len(texts)
    return elapsed


async def run(endpoint: str, texts: int, concurrency: int, repeats: int) -> list[float]:
    settings = ServiceSettings(
        _env_file=None,
        scorers=["claude-bedrock"],
        bedrock_endpoint_url=endpoint,
        bedrock_max_concurrency=concurrency,
    )
    judge = BedrockJudge("claude-bedrock", settings, ServiceMetrics())
    await judge.start()
    if not judge.ready:
        raise SystemExit(f"judge not ready: {judge.info().error}")
    try:
        await timed_batch(judge, [f"warm-up text {i}" for i in range(concurrency)])
        # Distinct texts in every round, so the cache answers none of them.
        return [
            await timed_batch(judge, [f"round {r} text {i}" for i in range(texts)]) for r in range(repeats)
        ]
    finally:
        await judge.close()


def throttling_every(period: int) -> Handler:
    calls = 0

    def handler(text: str, request: dict[str, object]) -> Reply:
        nonlocal calls
        calls += 1
        if calls % period == 0:
            return error_reply(429, "ThrottlingException", "Too many requests, please wait")
        return article_judge(text, request)

    return handler


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per fake Bedrock call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throttle-every", type=int, default=0, help="refuse every Nth call with 429")
    args = parser.parse_args()

    use_dummy_aws_credentials()
    with running_fake_bedrock() as (fake, _):
        fake.latency_s = args.latency
        if args.throttle_every:
            fake.handler = throttling_every(args.throttle_every)
        times = asyncio.run(run(fake.url, args.texts, args.concurrency, args.repeats))
    ideal = math.ceil(args.texts / args.concurrency) * args.latency
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")
    throttled = f", every {args.throttle_every}th call throttled" if args.throttle_every else ""
    per_call = f"{args.latency * 1000:.0f} ms per call"
    print(f"{args.texts} texts, concurrency {args.concurrency}, {per_call}{throttled}")
    print(f"ideal ceil({args.texts}/{args.concurrency}) x {args.latency} s = {ideal:.2f} s")
    for round_number, elapsed in enumerate(times, 1):
        print(f"round {round_number}: {elapsed:.2f} s, ratio {elapsed / ideal:.3f}")
    print(f"median ratio {sorted(times)[len(times) // 2] / ideal:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
