#!/usr/bin/env bash
# A rehearsal of bench/gpu_check.sh on this CPU machine, before a device call is spent on it.
#
# The GPU machine's image has torch and transformers (5.17 when last read) but none of fastapi,
# pydantic, pyzmq, msgspec, trl, datasets, boto3...: gpu_check.sh installs the wheels carried in .whl/
# with --no-deps. A wheel missing from that set, or a call that the image's older transformers
# lacks, would fail there and cost device minutes. This script builds a venv with the image's
# versions of the packages the project touches (KINDS.md in the device library lists them) and
# nothing it lacks, downloads the carried set for this machine's Python, and runs gpu_check.sh
# in it on the CPU with the tiny stand-in and a tiny policy. Read its figures as plumbing only.
#
#   bash bench/gpu_check_rehearsal.sh        # about 6 minutes; report in /tmp/gpu-image/gpu_check.txt
#
# Differences from the GPU run that it cannot cover: the CPU build of torch (this machine's), this
# machine's Python (3.11, the image's is 3.12: compiled wheels are fetched for each), and CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${REHEARSAL_DIR:-/tmp/gpu-image}"
python="${PYTHON:-python3}"
# The image's versions, as KINDS.md read them (2026-11); the rest of the image's packages the
# project imports are taken at this index's newest.
image=(transformers==5.17.0 tokenizers==0.23.2 huggingface_hub==1.33.0 safetensors==0.8.0
  accelerate==1.15.0 peft numpy httpx uvloop prometheus-client h11 anyio click pyyaml matplotlib
  pandas pyarrow tqdm aiohttp xxhash fsspec requests psutil regex filelock packaging
  typing-extensions jinja2 rich)
# The packages gpu-wheels.sh fetches by default (../shared/tools/gpu-wheels.sh), which the image lacks.
carried=(fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv
  annotated-types typing-inspection datasets dill multiprocess boto3 botocore s3transfer jmespath
  httptools python-multipart tenacity opentelemetry-api py-spy pyzmq msgspec trl==1.12.0)

if [ ! -x "$root/venv/bin/python" ]; then
  "$python" -m venv "$root/venv"
  "$root/venv/bin/python" -m pip install -q "${TORCH_CPU:-torch==2.13.0}" "${image[@]}"  # the Makefile's CPU torch
  # Some of the above pull in what the image does not have; the carried wheels must bring it.
  "$root/venv/bin/python" -m pip uninstall -q -y pydantic pydantic-core annotated-types typing-inspection \
    2> /dev/null || true
fi
mkdir -p "$root/wheels"
version=$("$root/venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
platforms=(); for n in 17 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
for package in "${carried[@]}"; do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$root/wheels" "$package" 2> /dev/null \
    || echo "rehearsal: could not download $package" >&2
done

rm -rf "$root/site"
export OUT="${OUT:-$root}"
PATH="$root/venv/bin:$PATH" GPU_CHECK_DEVICE=cpu GPU_CHECK_STAND_IN=tiny GPU_CHECK_WHEELS="$root/wheels" \
  GPU_CHECK_SITE="$root/site" \
  GPU_CHECK_POLICY_ARGS="--policy-shape tiny --batch 8 --response-tokens 16 --repeats 1" \
  bash bench/gpu_check.sh
out="$OUT/gpu_check.txt"
# gpu_check.sh carries on past a failed step (so that a GPU call still measures the others); here
# any step that failed fails the rehearsal.
if grep -E "ended with status|an import failed|Traceback" "$out"; then
  echo "rehearsal: a step failed (above); see $out" >&2
  exit 1
fi
echo "rehearsal: every step of gpu_check.sh ran; report in $out"
