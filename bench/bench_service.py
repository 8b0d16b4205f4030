"""The service's throughput and latency against the raw model's, measured in one run on one machine.

Raw ceiling: the same model in this process, on pre-tokenized texts already padded into
length-sorted batches of `--raw-batch` on the device (fp16 on CUDA): forward passes only, no
tokenization, no HTTP. Service: `python -m reward_service` as a subprocess, driven over loopback
HTTP by client processes; each scenario `CxN` is C concurrent clients sending requests of N
query/response pairs until the texts are used up.

    python -m bench.bench_service                                          # CPU: deep-narrow, 8x16
    python -m bench.bench_service --stand-in roberta-base --device cuda \\
        --scenarios 1x16,8x16,64x16,64x1,4x1024 --client-procs 8          # GPU: every target
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench.stand_ins import STEADY_STATE_ENV, add_classifier_arguments, build_classifier, natural_texts
from demo.run import running_service


@torch.inference_mode()
def raw_throughput(model_path: str, device: str, texts: list[str], batch: int, repeats: int = 3) -> float:
    """Texts per second of forward passes alone (best of `repeats` passes over all texts)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype).to(device).eval()
    ids = sorted(tokenizer(texts, truncation=True, max_length=512)["input_ids"], key=len)
    batches = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        width = max(map(len, chunk))
        padded = np.full((len(chunk), width), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, item in enumerate(chunk):
            padded[row, : len(item)] = item
            mask[row, : len(item)] = 1
        batches.append((torch.from_numpy(padded).to(device), torch.from_numpy(mask).to(device)))

    def run() -> float:
        started = time.perf_counter()
        outputs = [model(input_ids=i, attention_mask=m).logits for i, m in batches]
        torch.stack([o[:, 0].float().sum() for o in outputs]).cpu()  # one sync at the end
        return time.perf_counter() - started

    run()  # warm-up
    return len(texts) / min(run() for _ in range(repeats))


@dataclass
class ScenarioResult:
    name: str
    texts_per_s: float
    requests_per_s: float
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def _pairs(texts: list[str]) -> dict[str, list[str]]:
    # Query = the first half of the words, response = the rest: the service scores query + response.
    halves = [t.split(" ") for t in texts]
    return {
        "queries": [" ".join(w[: len(w) // 2]) + " " for w in halves],
        "responses": [" ".join(w[len(w) // 2 :]) for w in halves],
    }


async def _drive(url: str, bodies: list[dict[str, list[str]]], concurrency: int) -> list[float]:
    # aiohttp, not httpx: on a 2-core machine an httpx AsyncClient tops out near 200 requests/s,
    # which would measure the load generator instead of the service.
    latencies: list[float] = []
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(120)) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                async with client.post("/score", json=body) as response:
                    answer = await response.json()
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status != 200 or len(answer["scores"]) != len(body["queries"]):
                    raise RuntimeError(f"bad answer: {response.status} {str(answer)[:200]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _client_process(args: tuple[str, list[dict[str, list[str]]], int]) -> list[float]:
    return asyncio.run(_drive(*args))


def run_scenario(url: str, texts: list[str], clients: int, per_request: int, procs: int) -> ScenarioResult:
    bodies = [_pairs(texts[i : i + per_request]) for i in range(0, len(texts), per_request)]
    procs = max(1, min(procs, clients))
    shares = [(url, bodies[p::procs], clients // procs + (p < clients % procs)) for p in range(procs)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(procs) as pool:
        pool.map(_client_process, [(url, bodies[:1], 1)] * procs)  # warm-up: imports, connections
        started = time.perf_counter()
        latencies = [ms for part in pool.map(_client_process, shares) for ms in part]
        elapsed = time.perf_counter() - started
    return ScenarioResult(
        f"{clients} x {per_request}", len(texts) / elapsed, len(bodies) / elapsed, latencies
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_classifier_arguments(parser, stand_in="deep-narrow")
    parser.add_argument(
        "--texts", type=int, default=2048, help="texts per scenario (and for the raw ceiling)"
    )
    parser.add_argument("--raw-batch", type=int, default=256)
    parser.add_argument(
        "--scenarios", default="8x16", help="comma-separated CxN: C clients x N pairs per request"
    )
    parser.add_argument("--client-procs", type=int, default=1, help="processes the clients are spread over")
    parser.add_argument("--workers", type=int, default=1, help="the service's front-end workers")
    parser.add_argument("--max-wait-ms", type=float, help="REWARD_MAX_WAIT_MS for the service")
    args = parser.parse_args()

    model = args.model or str(build_classifier(args.stand_in))
    texts = natural_texts(AutoTokenizer.from_pretrained(model), args.texts)
    raw = raw_throughput(model, args.device, texts, args.raw_batch)
    env = {
        "REWARD_DEVICE": args.device,
        "REWARD_WORKERS": str(args.workers),
        "REWARD_MAX_ITEMS_PER_REQUEST": "1024",
        **STEADY_STATE_ENV,
        **({"REWARD_MAX_WAIT_MS": str(args.max_wait_ms)} if args.max_wait_ms is not None else {}),
    }
    log = Path(tempfile.gettempdir()) / "bench-service.log"
    results = []
    with running_service(Path(model), log, env, timeout_s=300) as (url, _):
        for scenario in args.scenarios.split(","):
            clients, per_request = (int(x) for x in scenario.lower().split("x"))
            results.append(run_scenario(url, texts, clients, per_request, args.client_procs))
    print(f"model={model} device={args.device} texts={len(texts)} workers={args.workers}")
    tokens = statistics.mean(len(t) for t in AutoTokenizer.from_pretrained(model)(texts)["input_ids"])
    print(f"mean tokens per text: {tokens:.0f}")
    print(
        f"{'':28} {'texts/s':>9} {'req/s':>8} {'share of raw':>12} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    )
    print(f"{'raw forward, batch ' + str(args.raw_batch):28} {raw:9.0f} {'':>8} {1.0:12.2f}")
    for r in results:
        print(
            f"{'service ' + r.name:28} {r.texts_per_s:9.0f} {r.requests_per_s:8.0f}"
            f" {r.texts_per_s / raw:12.2f} {r.percentile(50):8.1f} {r.percentile(90):8.1f}"
            f" {r.percentile(99):8.1f}"
        )


if __name__ == "__main__":
    main()
