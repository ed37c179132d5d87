#!/usr/bin/env bash
# GPU check of the Captioner at the 0.5B shape (bench/gpu_check.py): bf16 on CUDA, random weights laid out on the
# meta device and initialised on the GPU (nothing is downloaded), the real vocabulary (151,937 rows) and prompt.
#
# How to run it (about 2-4 minutes on one H200, model build included):
#   1. Here, once per checkout: `bench/gpu_check.sh --fetch-wheels`. The device machine's python3 has CUDA torch
#      but an older transformers than the project's (>= 5.24) and no network: this puts the wheel of the
#      transformers this checkout runs into .whl/ (ignored by git) for the run to carry.
#   2. On the device machine, one command: `bash bench/gpu_check.sh`, carrying `.whl`, timeout_s 600.
#      On any other CUDA machine whose python3 has torch and transformers >= 5.24, the same command.
#   Before either, `.venv/bin/python bench/gpu_check.py --smoke` checks the script on the CPU in seconds (so does
#   tests/test_captioner_gpu_check.py).
#
# What it prints (and writes to $OUT/gpu_check.json, or bench/gpu_check.json without $OUT): the GPU (nvidia-smi),
# then per batch size 1, 8, 32, 64: pairs/s (preparing and captioning one batch after the other),
# pairs_per_s_model_only (preprocessing and finishing overlapped, as the backend's pipeline over prepare / generate /
# finish does), seconds per batch, peak GPU memory (torch.cuda.max_memory_allocated) and the split of a batch:
# preprocessing (the processor on the CPU, uint8), device_preparation (copy to the GPU and normalisation there,
# measured apart), vision tower, DIM, projector + prefill, decoding (20 tokens), other (generate's setup) and
# finishing (tokens to captions on the CPU); then "series": 16 tiles of 4 dates through caption_series against their 48 intervals as pairs, seconds and
# vision-tower images per tile.
#
# Where to record the figures: bench/RESULTS.md, section "GPU check", with the date, the GPU and driver line,
# torch/transformers versions and the JSON's table; say that weights were random (speed and memory only).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  version=$(.venv/bin/python -c 'import transformers; print(transformers.__version__)')
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl "transformers==$version"
  ls .whl
  exit 0
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys, transformers; sys.exit(tuple(map(int, transformers.__version__.split(".")[:2])) < (5, 24))'; then
  if ! ls .whl/transformers-*.whl >/dev/null 2>&1; then
    echo "this python's transformers is older than 5.24: run bench/gpu_check.sh --fetch-wheels and carry .whl" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$python" bench/gpu_check.py --out "$out/gpu_check.json"
