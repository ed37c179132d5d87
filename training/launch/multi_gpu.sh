#!/usr/bin/env bash
# One stage on every GPU of this machine with the DeepSpeed launcher:
#   NUM_GPUS=8 training/launch/multi_gpu.sh training/configs/0.5b/stage2.yaml [KEY=VALUE ...]
# Global batch = per_device_batch_size × gradient_accumulation_steps × NUM_GPUS: keep it at the paper's value.
set -euo pipefail
cd "$(dirname "$0")/../.."
config="$1"; shift
gpus="${NUM_GPUS:-$(nvidia-smi -L | wc -l)}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
exec .venv/bin/deepspeed --no_local_rank --num_gpus "$gpus" --module ccexpert_cli train --config "$config" "$@"
