#!/usr/bin/env bash
# The QGIS plugin's test environment, shaped like a QGIS user's Python: Debian's QGIS and its /usr/bin/python3
# (not the pyenv python3 first on PATH), a venv that sees the system's packages (qgis, PyQt5, GDAL, numpy), and
# only the test tools on top. numpy is pinned to the system's version: GDAL's numpy bindings break if pip
# upgrades it. Idempotent.
# Usage: scripts/setup-qgis-venv.sh [VENV]   (default: .venv-qgis)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-qgis}"
system_python=/usr/bin/python3

scripts/ensure-system.sh qgis
test -x "$venv/bin/python" || "$system_python" -m venv --system-site-packages "$venv"
constraints="$venv/constraints.txt"
"$system_python" -c 'import numpy; print(f"numpy=={numpy.__version__}")' > "$constraints"
"$venv/bin/pip" install -q --disable-pip-version-check -c "$constraints" 'pytest>=7,<9' 'pytest-qgis>=2,<6'
