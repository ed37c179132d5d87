"""Each part has one face: the library imports without the command line, and the command line starts a backend
through one function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_library_and_the_backend_never_import_the_command_line() -> None:
    code = ("import sys, ccexpert_core, ccexpert_core.geo.region, ccexpert_core.inference, ccexpert_core.training.run, "
            "backend.app, backend.server; print(sorted(m for m in sys.modules if m.startswith('ccexpert_cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]"


def test_ccexpert_serve_reaches_the_backend_through_its_one_face() -> None:
    tree = ast.parse((REPO / "ccexpert_cli" / "commands" / "serve.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {module for module in imported if module.split(".")[0] == "backend"} == {"backend.server"}
