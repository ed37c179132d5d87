#!/usr/bin/env bash
# Rebuild the demo model that ships in ccexpert_core/demo_model: `ccexpert train --recipe demo` makes it in
# out/demo-recipe (synthetic data, three stages with ZeRO-2 in stage II, held-out scores and a model card), then it
# is installed into the package. About half an hour on 2 quiet CPU cores. Extra KEY=VALUE arguments override every
# stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
for argument in "$@"; do
    [[ "$argument" == *=* ]] || { echo "demo.sh takes KEY=VALUE overrides only, not '$argument'" >&2; exit 2; }
done
make venv
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
model="$(.venv/bin/ccexpert train --recipe demo --out out/demo-recipe "$@" | tail -n 1)"
rm -rf ccexpert_core/demo_model
cp -r "$model" ccexpert_core/demo_model
echo "installed $model as ccexpert_core/demo_model"
