"""A backend on this machine started from QGIS: without a command the dialog says how to start one; with one (the
project's real ``ccexpert serve``, the demo model, a free port) it starts, its URL fills the dialog, Test
connection names the model in words, and unloading the plugin stops it."""

from __future__ import annotations

import os
import urllib.request

import pytest

from qgis_plugin import classFactory
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.local_backend import LocalBackendSettings, serve_arguments

from conftest import CCEXPERT, require_project_venv, wait_until


def test_without_a_command_the_dialog_says_how_to_start_a_backend(qgis_iface, auth_ready) -> None:
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        LocalBackendSettings().save()
        dialog = plugin.show_dialog()
        dialog.start_local_button.click()
        said = dialog.connection_label.text()
        assert said.startswith("✗ no command starts a local backend yet: enter one under Local backend (e.g. ")
        assert "`ccexpert serve --host 127.0.0.1 --port 8000`" in said and not plugin.local_backend.running
    finally:
        plugin.unload()


def test_the_command_gets_the_model_and_a_port_and_listens_on_loopback_only() -> None:
    program, arguments, port = serve_arguments("/opt/cc/.venv/bin/python -m ccexpert_cli serve", "/models/x")
    assert program == "/opt/cc/.venv/bin/python" and 0 < port < 65536
    assert arguments == ["-m", "ccexpert_cli", "serve", "--port", str(port), "--model", "/models/x",
                         "--host", "127.0.0.1"]
    assert serve_arguments("ccexpert serve --port 8123", "")[1:] == (["serve", "--port", "8123", "--host",
                                                                      "127.0.0.1"], 8123)
    for command, message in (("ccexpert train", "must run `ccexpert serve`"),
                             ("ccexpert serve --host 0.0.0.0", "leave --host out"),
                             ("ccexpert serve --port http", "must be a number")):
        with pytest.raises(CaptionRunError, match=message):
            serve_arguments(command, "")


@pytest.mark.slow
def test_a_local_backend_starts_from_qgis_serves_the_demo_model_and_stops_on_unload(qgis_iface, auth_ready) -> None:
    require_project_venv()
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        dialog = plugin.show_dialog()
        command = f"{CCEXPERT} serve --no-ui"
        dialog.local_command.setText(command)
        dialog.local_model.setFilePath("")  # the default: the demo model
        dialog.start_local_button.click()
        assert dialog.connection_label.text().startswith("Starting the local backend at http://127.0.0.1:")
        wait_until(lambda: plugin.local_backend.is_ready or not plugin.local_backend.running, "the local backend")
        url = plugin.local_backend.url
        assert plugin.local_backend.is_ready, dialog.connection_label.text()
        wait_until(lambda: dialog.connection_label.text().startswith("✓"), "Test connection")
        said = dialog.connection_label.text()
        assert dialog.backend_url.text() == url
        assert said.startswith("✓ CCExpert demo model (trained on synthetic scenes only: not for real imagery)")
        assert "id demo_model@" in said and "/work" not in said  # the backend's id, no server path
        assert LocalBackendSettings.load() == LocalBackendSettings(command, "")
        pid = plugin.local_backend.process.processId()
    finally:
        plugin.unload()
    assert not plugin.local_backend.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/v1/health", timeout=2)
