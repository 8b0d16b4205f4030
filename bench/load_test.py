"""Load test: C concurrent clients x R requests of P query/response pairs against one service.

Checks that nothing is lost, reordered or wrong (every score equals scoring its text alone), that a
small queue makes the server answer 503 + Retry-After and the client absorbs it, and prints
throughput and latency percentiles.

    python -m bench.load_test                    # full: 8 clients x 500 requests x 16 pairs
    python -m bench.load_test --requests 50      # shorter
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.load import pair_pool, run_load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="requests per client")
    parser.add_argument("--pairs", type=int, default=16, help="query/response pairs per request")
    parser.add_argument("--queue-capacity", type=int, default=64, help="small, so that 503s happen")
    args = parser.parse_args()

    # Imported here: `--help` needs no torch.
    from demo.tiny_models import build_tiny_roberta_classifier
    from harness.live_server import serving
    from harness.reference_scoring import DirectScorer
    from reward_service.app import create_app
    from reward_service.settings import ServiceSettings

    model = build_tiny_roberta_classifier(Path(tempfile.mkdtemp()) / "tiny-roberta")
    pool = pair_pool()
    direct = DirectScorer(model)
    expected = {q + r: direct.nothate_logit(q + r) for q, r in pool}
    settings = ServiceSettings(
        _env_file=None,
        roberta_model=str(model),
        device="cpu",
        queue_capacity=args.queue_capacity,
        max_items_per_request=args.pairs,
        retry_after_s=0,
    )
    with serving(create_app(settings)) as server:
        report = run_load(server.url, expected, pool, args.clients, args.requests, args.pairs)
    print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
