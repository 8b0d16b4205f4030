"""Does parsing stall the event loop? `/healthz` latency while clients send big bodies.

Against one service on a stand-in classifier, for `--seconds`: `--valid` clients each send, one after
another, max-size valid `/score` bodies (`--texts` x `--chars`, about 20 MB) with a short deadline
(`X-Reward-Timeout-Ms`, so the figure is about parsing, not about waiting for the model), and
`--hostile` clients send 60 MB bodies that are valid JSON but carry an unknown field,
`{"texts": ["hello"], "x": [0, 0, ...]}`, to `/score`, `/classify` and `/predict` in turn.
Meanwhile a client in its own process polls `/healthz` every 20 ms. Printed: `/healthz`
p50/p99/max and the statuses of the big requests.

    python -m bench.bench_parse_stall --stand-in tiny --seconds 20 --valid 4 --hostile 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.stand_ins import STEADY_STATE_ENV, build_classifier
from demo.run import running_service

# Each route's own text field first, then the unknown one.
_HOSTILE_FIELDS = {
    "/score": b'"texts": ["hello"]',
    "/classify": b'"input": "hello"',
    "/predict": b'"inputs": "hello"',
}


def hostile_body(path: str, size_bytes: int) -> bytes:
    """Valid JSON of about `size_bytes`: `path`'s text field, then an unknown one holding a huge list."""
    zeros = b"0, " * (size_bytes // 3)
    return b"{" + _HOSTILE_FIELDS[path] + b', "x": [' + zeros + b"0]}"


def poll(url: str, seconds: float) -> list[float]:
    """`/healthz` latencies, one probe every 20 ms for `seconds`; run in its own process, so that the
    senders' threads (and their GIL) do not delay the probes."""
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stand-in", default="tiny", choices=["tiny", "deep-narrow", "roberta-base"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--valid", type=int, default=4, help="clients sending max-size valid bodies")
    parser.add_argument("--hostile", type=int, default=2, help="clients sending 60 MB unknown-field bodies")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--hostile-mb", type=float, default=60.0)
    parser.add_argument("--deadline-ms", type=int, default=1000)
    args = parser.parse_args()

    model = build_classifier(args.stand_in)
    words = "the quick brown fox jumps over a lazy dog while rivers run to the sea ".split()
    text = " ".join(words[i % len(words)] for i in range(args.chars // 4))[: args.chars]
    valid = httpx.Request("POST", "http://x", json={"texts": [text] * args.texts}).content
    hostile = {path: hostile_body(path, int(args.hostile_mb * 1024 * 1024)) for path in _HOSTILE_FIELDS}
    headers = {"content-type": "application/json", "X-Reward-Timeout-Ms": str(args.deadline_ms)}
    log = Path(tempfile.gettempdir()) / "bench-parse-stall.log"
    with running_service(
        Path(model), log, {"REWARD_QUEUE_CAPACITY": "65536", **STEADY_STATE_ENV}, timeout_s=300
    ) as (url, _):
        stop = threading.Event()
        statuses: Counter[str] = Counter()
        lock = threading.Lock()

        def sender(index: int, bodies: dict[str, bytes]) -> None:
            paths = list(bodies)
            with httpx.Client(base_url=url, timeout=120) as client:
                turn = index
                while not stop.is_set():
                    path = paths[turn % len(paths)]
                    body = bodies[path]
                    turn += 1
                    try:
                        status = str(client.post(path, content=body, headers=headers).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with lock:
                        statuses[f"{'valid' if body is valid else 'hostile'} {path} {status}"] += 1

        with ThreadPoolExecutor(args.valid + args.hostile) as pool, ProcessPoolExecutor(1) as prober:
            senders = [pool.submit(sender, i, {"/score": valid}) for i in range(args.valid)]
            senders += [pool.submit(sender, i, hostile) for i in range(args.hostile)]
            time.sleep(1)  # the senders are under way
            latencies = sorted(prober.submit(poll, url, args.seconds).result())
            stop.set()
            for future in senders:
                future.result()

    ms = [1000 * s for s in latencies]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(
        f"stand-in {args.stand_in}, {args.seconds:.0f} s: {args.valid} clients x "
        f"{len(valid) / 1e6:.1f} MB valid bodies ({args.texts} x {args.chars} chars, deadline "
        f"{args.deadline_ms} ms), {args.hostile} clients x {len(hostile['/score']) / 1e6:.1f} MB "
        "unknown-field bodies"
    )
    print(
        f"/healthz: {len(ms)} probes, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )
    for key, count in sorted(statuses.items()):
        print(f"  {key}: {count}")


if __name__ == "__main__":
    main()
