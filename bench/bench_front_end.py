"""A front-end process's footprint: seconds from start until /readyz is 200, peak RSS, and whether
it imported PyTorch or transformers.

Each run starts a fresh interpreter that serves the app (`harness.live_server`, the engine in its
own process as always), sends `--requests` one-text requests and reports; the stand-in is built by
this parent process, so the child's figures are its own:

    python -m bench.bench_front_end --stand-in tiny --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.stand_ins import STEADY_STATE_ENV, build_classifier

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, re, sys, time
started = time.perf_counter()
import httpx
from harness.live_server import serving
from harness.service import service_settings
from reward_service.app import create_app

with serving(create_app(service_settings(sys.argv[1])), timeout_s=300) as server:
    ready_s = time.perf_counter() - started
    for _ in range(int(sys.argv[2])):
        answer = httpx.post(server.url + "/score", json={"texts": ["Have a lovely day."]}, timeout=60)
        answer.raise_for_status()
print(json.dumps({
    "ready_s": ready_s,
    # VmHWM, not ru_maxrss: Linux keeps the parent's ru_maxrss across fork and exec.
    "peak_rss_mb": int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) / 1024,
    "imported": sorted(name for name in ("torch", "transformers") if name in sys.modules),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stand-in", default="tiny", choices=["tiny", "deep-narrow", "roberta-base"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    model = build_classifier(args.stand_in)
    env = {**os.environ, **STEADY_STATE_ENV}
    results = []
    for _ in range(args.runs):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(model), str(args.requests)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"stand-in {args.stand_in}; {args.requests} requests per run")
    print("run  ready_s  peak_rss_mb  imported")
    for index, result in enumerate(results, 1):
        imported = ",".join(result["imported"]) or "-"
        print(f"{index:3d}  {result['ready_s']:7.2f}  {result['peak_rss_mb']:11.0f}  {imported}")
    print(
        f"median ready {statistics.median(r['ready_s'] for r in results):.2f} s, "
        f"peak RSS {statistics.median(r['peak_rss_mb'] for r in results):.0f} MB"
    )


if __name__ == "__main__":
    main()
