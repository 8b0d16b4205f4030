"""How long does decoding a big body hold the event loop? In one process, without HTTP.

A ticker task on the loop wakes every millisecond and records the longest gap between its wake-ups
while `--bodies` max-size valid `/score` bodies (`--texts` x `--chars`) go through the route's body
decoding (`reward_service.body_decoding.decode_body`): once as the service does it (bodies over
`OFF_LOOP_BYTES` in a worker thread), once with everything on the loop, and once as FastAPI alone
would (`json.loads`, then pydantic, on the loop). Alternated, so that load on the machine falls on
each alike; the longest gap is what a `/healthz` probe would wait behind one such body.

    python -m bench.bench_decode_stall --bodies 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from unittest import mock

from starlette.requests import Request

from reward_service import body_decoding
from shared.schemas import ScoreRequest


def _request(body: bytes) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/json")]
    return Request({"type": "http", "method": "POST", "path": "/score", "headers": headers}, receive)


async def _longest_gap_ms(work: asyncio.Future[None]) -> float:
    longest, last = 0.0, time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    await work
    return 1000 * longest


async def _as_service(body: bytes) -> None:
    guard = body_decoding.key_guard(ScoreRequest)
    await body_decoding.decode_body(_request(body), guard, ScoreRequest)


async def _all_on_loop(body: bytes) -> None:
    with mock.patch.object(body_decoding, "OFF_LOOP_BYTES", len(body) + 1):
        await _as_service(body)


async def _fastapi_alone(body: bytes) -> None:
    ScoreRequest.model_validate(json.loads(body))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bodies", type=int, default=6)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--chars", type=int, default=20_000)
    args = parser.parse_args()
    words = "the quick brown fox jumps over a lazy dog while rivers run to the sea ".split()
    text = " ".join(words[i % len(words)] for i in range(args.chars // 4))[: args.chars]
    body = json.dumps({"texts": [text] * args.texts}).encode()
    ways = {"service (thread over 256 KiB)": _as_service, "msgspec, all on the loop": _all_on_loop}
    ways["json.loads + pydantic on the loop"] = _fastapi_alone
    gaps: dict[str, list[float]] = {name: [] for name in ways}

    async def run() -> None:
        for _ in range(args.bodies):
            for name, way in ways.items():
                gaps[name].append(await _longest_gap_ms(asyncio.ensure_future(way(body))))

    asyncio.run(run())
    print(f"{len(body) / 1e6:.1f} MB body ({args.texts} x {args.chars} chars), {args.bodies} each:")
    for name, values in gaps.items():
        print(
            f"  {name:36} longest gap: median {statistics.median(values):6.1f} ms, max {max(values):6.1f} ms"
        )


if __name__ == "__main__":
    main()
