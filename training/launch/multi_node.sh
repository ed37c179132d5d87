#!/usr/bin/env bash
# One stage on several machines with the DeepSpeed launcher and a hostfile ("host slots=8" per line); run it on
# the first host, with this repository and its .venv at the same path on every host and passwordless ssh:
#   HOSTFILE=training/launch/hostfile training/launch/multi_node.sh training/configs/7b/stage3.yaml [KEY=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
config="$1"; shift
hostfile="${HOSTFILE:-training/launch/hostfile}"
[ -f "$hostfile" ] || { echo "hostfile not found: $hostfile (one 'hostname slots=N' per line)" >&2; exit 2; }
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
exec .venv/bin/deepspeed --no_local_rank --hostfile "$hostfile" --module ccexpert_cli train --config "$config" "$@"
