"""The run contract in the project's Python (tests/qgis/test_run_contract.py runs the same cases in QGIS's)."""

from run_contract_cases import *  # noqa: F403 — the shared cases are this module's tests
