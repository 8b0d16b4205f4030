"""Service throughput against raw model throughput, measured in one run on one machine.

Raw: the same model in-process, tokenizing and running sorted batches of `--batch` texts with no
HTTP and no batcher. Service: `--clients` concurrent HTTP clients each sending requests of
`--per-request` texts to the service on loopback, so the micro-batcher has to merge them.

    python -m bench.bench_service                                   # tiny stand-in model, CPU
    python -m bench.bench_service --model <dir or hub id> --device cuda
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from shared import RewardClient


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "thank you kind help hate stupid lovely day you are terrible nice awful friend go away".split()
    # About 180 tokens on average, like the reference figures.
    return [" ".join(rng.choices(words, k=rng.randint(60, 300))) for _ in range(n)]


@torch.inference_mode()
def raw_throughput(model_path: str, device: str, texts: list[str], batch: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype).to(device).eval()
    ordered = sorted(texts, key=len)

    def run() -> None:
        for start in range(0, len(ordered), batch):
            enc = tokenizer(
                ordered[start : start + batch], padding=True, truncation=True, return_tensors="pt"
            )
            model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm-up
    started = time.perf_counter()
    run()
    return len(texts) / (time.perf_counter() - started)


def service_throughput(url: str, texts: list[str], clients: int, per_request: int) -> float:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    lock = threading.Lock()

    def worker() -> None:
        with RewardClient(url, max_items_per_request=per_request) as client:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                assert len(client.score(chunk).scores) == len(chunk)

    def run() -> float:
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    with RewardClient(url) as client:  # warm-up
        client.score(texts[:per_request])
    return len(texts) / run()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="classifier dir or hub id (default: build the tiny stand-in)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64, help="raw batch size")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=16)
    args = parser.parse_args()

    from demo.tiny_models import build_tiny_roberta_classifier
    from reward_service.app import create_app
    from reward_service.settings import ServiceSettings
    from tests.live_server import serving

    model = args.model or str(build_tiny_roberta_classifier(Path(tempfile.mkdtemp()) / "tiny", train_steps=0))
    texts = make_texts(args.texts)
    raw = raw_throughput(model, args.device, texts, args.batch)
    settings = ServiceSettings(_env_file=None, roberta_model=model, device=args.device, log_level="warning")
    with serving(create_app(settings)) as server:
        served = service_throughput(server.url, texts, args.clients, args.per_request)
    print(f"model={model} device={args.device} texts={len(texts)}")
    print(f"raw in-process (batch {args.batch}): {raw:.0f} texts/s")
    print(f"service ({args.clients} clients x {args.per_request} texts/request, HTTP): {served:.0f} texts/s")
    print(f"service / raw = {served / raw:.2f}")


if __name__ == "__main__":
    main()
