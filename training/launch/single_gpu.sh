#!/usr/bin/env bash
# One stage on one GPU: training/launch/single_gpu.sh training/configs/0.5b/stage1.yaml [KEY=VALUE ...]
# DeepSpeed (when the stage config names one) runs as a world of one process.
set -euo pipefail
cd "$(dirname "$0")/../.."
config="$1"; shift
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
exec .venv/bin/ccexpert train --config "$config" "$@"
