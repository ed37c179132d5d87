#!/usr/bin/env bash
# One prepared GPU check (for the device tool or any CUDA machine): installs what it needs, then runs
# bench/gpu_check.py and writes its JSON to $OUT (or bench/) as gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}"
if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  # The GPU machine needs a CUDA build of the same torch release as the CPU pin.
  .venv-gpu/bin/pip install -q torch==2.13.0
  .venv-gpu/bin/pip install -q --no-deps -e .
  .venv-gpu/bin/pip install -q "transformers>=5.24,<6" tokenizers safetensors accelerate numpy pillow pyyaml
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv-gpu/bin/python bench/gpu_check.py | tee "$out/gpu_check.json"
