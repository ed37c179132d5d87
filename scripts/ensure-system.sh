#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those that are missing (idempotent, quiet when all is there).
# Usage: scripts/ensure-system.sh [python|java|qgis]...
set -euo pipefail

missing=()
need() { dpkg -s "$1" >/dev/null 2>&1 || missing+=("$1"); }

for what in "$@"; do
  case "$what" in
    python)
      # A venv needs ensurepip, which Debian ships separately from python3.
      python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need python3-venv ;;
    java)
      # METEOR 1.5 (evaluation) runs on a JVM.
      command -v java >/dev/null 2>&1 || need default-jre-headless ;;
    qgis)
      for p in qgis python3-qgis python3-venv python3-pip; do need "$p"; done ;;
    *) echo "ensure-system: unknown component '$what'" >&2; exit 2 ;;
  esac
done

[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "Installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
