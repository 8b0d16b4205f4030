#!/usr/bin/env bash
# One-call GPU check (issue 21): the service's GPU figures against their targets, in one file.
#
# Prepare on the CPU machine (the GPU image lacks fastapi, pyzmq, msgspec, aiohttp, trl, ...):
#   ../shared/tools/gpu-wheels.sh aiohttp aiohappyeyeballs aiosignal frozenlist multidict \
#       propcache yarl attrs && ../shared/tools/gpu-wheels.sh      # the default set, then aiohttp's
# Then one device call, carrying the wheels (carry: [".whl"]), well inside 8 minutes:
#   bash bench/gpu_check.sh            # figures in $OUT/gpu_check.txt (or ./gpu_check.txt)
#
# Steps, each with its own time limit so that one slow step cannot eat the others' time:
#   1. install the carried wheels into /tmp/site (no index, no network);
#   2. bench_service on the roberta-base-shaped stand-in (built locally, random weights): the raw
#      forward ceiling, then 1x16 (a lone 16-pair request: p50/p99), 8x16, 64x16, 64x1 (req/s)
#      and 4x1024, with the clients spread over 8 processes;
#   3. the same 64x1 with --workers 2, to see whether the front end bounds it;
#   4. one PPO step's reward wait: a Qwen2-0.5B-shaped policy generates 64 responses on the GPU
#      and the service (same GPU) scores them (bench/gpu_reward_wait.py);
#   5. two engine restarts on the GPU: their phases, and whether the supervisor ever took a
#      starting or loading engine for frozen (bench/bench_engine_restart.py).
# Targets (issue 10): >= 0.9 of raw at 64x16 and 4x1024, >= 0.8 at 8x16, lone p50 <= 10 ms and
# p99 <= 20 ms, 64x1 >= 4,000 requests/s.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.txt"
: > "$out"
note() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$out"; }

note "install carried wheels"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$out" 2>&1
  export PYTHONPATH="$PWD:/tmp/site" PATH="/tmp/site/bin:$PATH"
else
  echo "no .whl/ carried: using the image's packages only" | tee -a "$out"
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$out" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__)" >> "$out" 2>&1

note "bench_service: roberta-base stand-in, every GPU scenario"
timeout 300 python3 -m bench.bench_service --stand-in roberta-base --device cuda --texts 4096 \
  --scenarios 1x16,8x16,64x16,64x1,4x1024 --client-procs 8 >> "$out" 2>&1 \
  || echo "bench_service ended with status $?" | tee -a "$out"

note "bench_service: 64x1 with two front-end workers"
timeout 90 python3 -m bench.bench_service --stand-in roberta-base --device cuda --texts 4096 \
  --scenarios 64x1 --client-procs 8 --workers 2 >> "$out" 2>&1 \
  || echo "bench_service --workers 2 ended with status $?" | tee -a "$out"

note "PPO step reward wait: Qwen2-0.5B-shaped policy, 64 x 128 tokens"
python3 - >> "$out" 2>&1 <<'PY'
import subprocess, sys, tempfile
from pathlib import Path
from bench.stand_ins import build_classifier
from demo.run import running_service
model = build_classifier("roberta-base")
env = {"REWARD_DEVICE": "cuda", "REWARD_MAX_ITEMS_PER_REQUEST": "1024"}
with running_service(Path(model), Path(tempfile.gettempdir()) / "gpu-check-service.log", env, 180) as (url, _):
    subprocess.run([sys.executable, "-m", "bench.gpu_reward_wait", "--url", url], timeout=150, check=False)
PY
note "engine restarts on the GPU: phases and engines killed as frozen"
timeout 90 python3 -m bench.bench_engine_restart --stand-in roberta-base --device cuda --kills 2 \
  >> "$out" 2>&1 || echo "bench_engine_restart ended with status $?" | tee -a "$out"
note "done"
