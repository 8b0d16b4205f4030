"""The engine's own time for a lone request: the forward of one request's items, cut into batches
the way the engine cuts them, with no HTTP, tokenization or sockets.

Each request's pairs are tokenized up front; the engine's `FairScheduler` cuts it into batches
(under a padding limit, as `REWARD_MAX_BATCH_PADDING_TOKENS` sets) and the engine's `ModelRunner`
runs them, for every combination of intra-op threads, padding limit and attention asked for
(`padded`: SDPA over the padded batch; `per-item`: attention on each item's own tokens; `packed`:
the other layers on the real tokens too, the CPU engine's).
This is the floor under a lone request's latency through the service (`bench_service`'s `1xN`),
and the share of it that attention takes (`torch.profiler`) says whether a front-end change could
reach a target. `spin ms` is the CPU time the process burns in the 20 ms after a forward, while
OpenMP's threads spin waiting for more work: a core the front end cannot use (the engine sets
GOMP_SPINCOUNT; compare with it unset):

    python -m bench.bench_forward --stand-in tiny --threads 1,2 --padding 512,none
    GOMP_SPINCOUNT=10000 python -m bench.bench_forward --threads 1,2 --padding 2048 --attention packed

`--gap-ms` sleeps between requests, as the engine waits while a lone client and its front end do
their part of each round trip: the forward after such a gap, with the OpenMP threads asleep and the
caches cooled, is the one a lone request gets through the service.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer

from bench.bench_service import _pairs
from bench.stand_ins import add_classifier_arguments, build_classifier, natural_texts
from reward_service.engine.model_runner import ModelRunner, load_classifier
from reward_service.engine.protocol import TOKEN_DTYPE
from reward_service.engine.scheduler import FairScheduler, QueuedRequest

WARM_UP_REQUESTS = 10
# Large enough that one request's items are always one window (the engine's defaults are larger).
MAX_BATCH_TOKENS = 16_384
MAX_BATCH_ITEMS = 256
# --attention: ModelRunner's (per_item_attention, pack_tokens) for each.
ATTENTIONS = {"padded": (False, False), "per-item": (True, False), "packed": (True, True)}
# How long after a forward `spin_after_ms` watches the process's CPU time.
SPIN_WINDOW_S = 0.02


def tokenized_requests(model: str, requests: int, pairs: int) -> list[list[np.ndarray]]:
    """`requests` requests of `pairs` query + response token ids, the texts `bench_service` sends."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = natural_texts(tokenizer, requests * pairs)
    out = []
    for start in range(0, len(texts), pairs):
        body = _pairs(texts[start : start + pairs])
        joined = [q + r for q, r in zip(body["queries"], body["responses"], strict=True)]
        encoded = tokenizer(joined, truncation=True, max_length=512)["input_ids"]
        out.append([np.asarray(ids, dtype=TOKEN_DTYPE) for ids in encoded])
    return out


def cut(request: list[np.ndarray], padding_limit: int | None) -> list[list[np.ndarray]]:
    """The batches the engine runs for this request alone."""
    scheduler = FairScheduler(MAX_BATCH_TOKENS, MAX_BATCH_ITEMS, 1 << 30, padding_limit)
    queued = QueuedRequest(b"bench", 0, np.concatenate(request), [len(ids) for ids in request])
    scheduler.add(queued)
    return [[item.request.ids(item.index) for item in batch] for batch in scheduler.next_window()]


def lone_forward_ms(
    runner: ModelRunner, requests: list[list[np.ndarray]], padding_limit: int | None, gap_ms: float = 0.0
) -> list[float]:
    """Milliseconds per request, scheduling included, after a warm-up, `gap_ms` idle between requests."""
    times = []
    for number, request in enumerate(requests):
        started = time.perf_counter()
        for batch in cut(request, padding_limit):
            runner.collect(runner.launch(batch))
        if number >= WARM_UP_REQUESTS:
            times.append((time.perf_counter() - started) * 1000)
        if gap_ms:
            time.sleep(gap_ms / 1000)
    return times


def spin_after_ms(runner: ModelRunner, request: list[np.ndarray], padding_limit: int | None) -> float:
    """Median CPU milliseconds the process spends in the 20 ms after a forward (5 tries)."""
    burnt = []
    for _ in range(5):
        for batch in cut(request, padding_limit):
            runner.collect(runner.launch(batch))
        before = time.process_time()
        time.sleep(SPIN_WINDOW_S)
        burnt.append((time.process_time() - before) * 1000)
    return statistics.median(burnt)


def attention_share(
    runner: ModelRunner, requests: list[list[np.ndarray]], padding_limit: int | None
) -> float:
    """The share of the forward's CPU time spent in scaled-dot-product attention."""
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for request in requests:
            for batch in cut(request, padding_limit):
                runner.collect(runner.launch(batch))
    events = profiled.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    attention = sum(event.self_cpu_time_total for event in events if "scaled_dot_product" in event.key)
    return attention / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_classifier_arguments(parser, stand_in="tiny")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=16, help="query/response pairs per request")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch intra-op thread counts")
    parser.add_argument(
        "--padding", default="512,none", help="comma-separated padding limits ('none': no limit)"
    )
    parser.add_argument(
        "--attention", default="padded,per-item,packed", help=f"comma-separated, of {', '.join(ATTENTIONS)}"
    )
    parser.add_argument(
        "--gap-ms", default="0", help="comma-separated idle milliseconds between requests (0: back to back)"
    )
    args = parser.parse_args()
    gaps = [float(gap) for gap in args.gap_ms.split(",")]
    if min(gaps) < 0:
        parser.error("--gap-ms must not be negative")
    if unknown := set(args.attention.split(",")) - set(ATTENTIONS):
        parser.error(f"--attention: unknown {sorted(unknown)}; choose from {list(ATTENTIONS)}")
    if args.requests <= WARM_UP_REQUESTS:
        parser.error(f"--requests must be more than the {WARM_UP_REQUESTS} warm-up requests")

    model = args.model or str(build_classifier(args.stand_in))
    device = torch.device(args.device)
    requests = tokenized_requests(model, args.requests, args.pairs)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    runners = {}
    for attention in args.attention.split(","):
        classifier = load_classifier(model, device, dtype)  # one each: per-item attention changes it
        pad = classifier.config.pad_token_id or 0
        per_item, pack = ATTENTIONS[attention]
        runners[attention] = ModelRunner(
            classifier, device, pad, MAX_BATCH_TOKENS, per_item_attention=per_item, pack_tokens=pack
        )
        if pack and runners[attention].packing is None:
            parser.error(f"{model}: its tokens cannot be packed (the log says why)")
    tokens = [len(ids) for request in requests for ids in request]
    print(f"{len(requests)} requests of {args.pairs} pairs, {statistics.mean(tokens):.0f} tokens per pair")
    print(
        f"{'threads':>7} {'padding':>8} {'attention':>9} {'gap ms':>6} {'batches':>8} {'p50 ms':>8}"
        f" {'p90 ms':>8} {'in SDPA':>8} {'spin ms':>8}"
    )
    torch.set_grad_enabled(False)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for limit_text in args.padding.split(","):
            limit = None if limit_text == "none" else int(limit_text)
            batches = statistics.mean(len(cut(request, limit)) for request in requests)
            for attention, runner in runners.items():
                share = attention_share(runner, requests[: WARM_UP_REQUESTS * 2], limit)
                spin = spin_after_ms(runner, requests[0], limit)
                for gap in gaps:
                    times = lone_forward_ms(runner, requests, limit, gap)
                    p90 = statistics.quantiles(times, n=10)[-1]
                    print(
                        f"{threads:>7} {limit_text:>8} {attention:>9} {gap:>6g} {batches:>8.2f}"
                        f" {statistics.median(times):>8.2f} {p90:>8.2f} {share:>7.0%} {spin:>8.2f}"
                    )


if __name__ == "__main__":
    main()
