"""Fixtures of the plugin suite: real QGIS (pytest-qgis, offscreen), a real backend from the project's .venv.

The backend is ``ccexpert serve`` with a tiny random-weights model made by ``ccexpert create-model``, on
127.0.0.1, with a token file: started once per session, stopped at its end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication

REPO = Path(__file__).resolve().parents[2]
# The suite runs in Debian's QGIS Python; the backend launcher shared with the main suite is plain stdlib.
sys.path.append(str(REPO / "tests"))
from serve_process import ServeProcess, start_serve  # noqa: E402

CCEXPERT = REPO / ".venv" / "bin" / "ccexpert"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
TOKEN = "plugin-test-token"
MASTER_PASSWORD = "ccexpert-plugin-tests"
#: Where tests save the screenshots for review (docs/ holds the README's copies).
SCREENSHOTS = Path(os.environ.get("CCEXPERT_SCREENSHOTS", REPO / "build" / "screenshots"))
BACKEND_START_S = 240.0
#: Safety net for waits on QGIS tasks (a hung run fails the test instead of the suite hanging).
WAIT_LIMIT_S = 300.0

# Inputs are read-only for the analyst: no .aux.xml beside them.
os.environ["GDAL_PAM_ENABLED"] = "NO"
gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")


def build_plugin_zip(folder: Path) -> Path:
    """`make plugin`'s zip, built into ``folder``."""
    built = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_plugin.py"), "--out", str(folder)],
        check=True, capture_output=True, text=True,
    )
    return Path(built.stdout.strip())


def require_project_venv() -> None:
    """The backend runs from the project's .venv (torch, the model); `make test` builds it first."""
    if not CCEXPERT.exists():
        pytest.fail(f"{CCEXPERT} is missing: run `make venv` (or `make test`) first")


class Backend(ServeProcess):
    """A running ``ccexpert serve`` with the test token."""

    def info(self) -> dict:
        """``/v1/info``, with the token."""
        request = urllib.request.Request(self.url + "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


def start_backend(model: Path, folder: Path) -> Backend:
    """``ccexpert serve`` on a free loopback port with the test token; returns once /v1/health answers."""
    require_project_venv()
    folder.mkdir(parents=True, exist_ok=True)
    tokens = folder / "tokens.txt"
    tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
    args = ["--model", str(model), "--token-file", str(tokens), "--no-ui"]
    started = start_serve(CCEXPERT, args, folder / "serve.log", BACKEND_START_S)
    return Backend(started.url, started.process, started.log)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights CCExpert saved by ``ccexpert create-model``."""
    require_project_venv()
    folder = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([str(CCEXPERT), "create-model", str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def backend(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The session's backend (token auth)."""
    server = start_backend(tiny_model, tmp_path_factory.mktemp("backend"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_ready(qgis_app: QgsApplication) -> None:
    """QGIS's authentication database unlocked (a user types the master password; tests set it)."""
    manager = QgsApplication.authManager()
    manager.setPasswordHelperEnabled(False)
    assert manager.setMasterPassword(MASTER_PASSWORD, True), "the test auth database has another master password"


def _stored_token(token: str) -> Iterator[str]:
    from qgis_plugin.auth import store_token

    config_id = store_token(token)
    yield config_id
    QgsApplication.authManager().removeAuthenticationConfig(config_id)


@pytest.fixture(scope="session")
def token_id(auth_ready) -> Iterator[str]:
    """An authentication configuration holding the backend's token."""
    yield from _stored_token(TOKEN)


@pytest.fixture(scope="session")
def wrong_token_id(auth_ready) -> Iterator[str]:
    """An authentication configuration holding a token the backend does not know."""
    yield from _stored_token("not-the-token")


@pytest.fixture
def project(qgis_app: QgsApplication) -> Iterator[QgsProject]:
    """The project, emptied after the test (layers it owns are freed before QGIS exits)."""
    current = QgsProject.instance()
    yield current
    current.removeAllMapLayers()


def add_raster(project: QgsProject, path: Path, name: str) -> QgsRasterLayer:
    """A GDAL raster layer in the project."""
    layer = QgsRasterLayer(str(path), name, "gdal")
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


class Feedback:
    """What ``run_job`` asks of its runner, headless: the messages it logs kept, progress ignored, canceled where
    ``canceled`` says (from the start, or set by a test)."""

    def __init__(self, canceled: bool = False) -> None:
        self.messages: list[str] = []
        self.canceled = canceled

    def isCanceled(self) -> bool:  # noqa: N802 (QGIS's names)
        return self.canceled

    def setProgress(self, percent: float) -> None:  # noqa: N802
        pass

    def pushInfo(self, text: str) -> None:  # noqa: N802
        self.messages.append(text)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Process Qt events until ``condition`` holds (tasks report and finish through the event loop)."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        QCoreApplication.processEvents()
        time.sleep(0.02)
