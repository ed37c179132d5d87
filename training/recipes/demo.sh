#!/usr/bin/env bash
# Rebuild the demo model that ships in ccexpert_core/demo_model: synthetic data, three stages (ZeRO-2 in stage II),
# held-out scores and a model card. About half an hour on 2 quiet CPU cores. Extra KEY=VALUE arguments override
# every stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
make venv
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
exec .venv/bin/ccexpert train --recipe demo "$@"
