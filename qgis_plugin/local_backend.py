"""A backend on this machine, started from QGIS: ``ccexpert serve`` run by a command the analyst configures (the
plugin cannot guess where the project's Python lives), as a QProcess that QGIS stops when the plugin unloads.

The command is one line, e.g. ``/home/me/ccexpert/.venv/bin/ccexpert serve --port 8000`` or
``/home/me/ccexpert/.venv/bin/python -m ccexpert_cli serve``; ``--model`` is added for a chosen model (the
default is the shipped demo model), ``--host 127.0.0.1`` and ``--port`` where the command gives none (a free port
then). The backend is ready once ``/v1/health`` answers; its output goes to a log file beside QGIS's settings.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsNetworkAccessManager, QgsSettings
from qgis.PyQt.QtCore import QObject, QProcess, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from .errors import CaptionRunError
from .shared_modules import protocol

SETTINGS_GROUP = "ccexpert/local_backend"
#: How long a backend may take to load its model before the start is given up.
START_TIMEOUT_S = 300.0
#: How often /v1/health is asked while the backend starts.
POLL_MS = 500
#: How long a stopping backend is given before it is killed.
STOP_TIMEOUT_MS = 15000


@dataclass(frozen=True)
class LocalBackendSettings:
    """The command that starts ``ccexpert serve`` here, and the model it serves ("" for the default)."""

    command: str = ""
    model: str = ""

    def save(self, settings: QgsSettings | None = None) -> None:
        """Remember them (under ``ccexpert/local_backend/``)."""
        settings = settings or QgsSettings()
        settings.setValue(f"{SETTINGS_GROUP}/command", self.command)
        settings.setValue(f"{SETTINGS_GROUP}/model", self.model)

    @classmethod
    def load(cls, settings: QgsSettings | None = None) -> "LocalBackendSettings":
        """The remembered ones ("" for what was never set)."""
        settings = settings or QgsSettings()
        return cls(str(settings.value(f"{SETTINGS_GROUP}/command", "") or ""),
                   str(settings.value(f"{SETTINGS_GROUP}/model", "") or ""))


def how_to_start() -> str:
    """What to do where no command is configured: the command line, with this machine's ``ccexpert`` if on PATH."""
    found = shutil.which("ccexpert")
    example = f"{found} serve --port {protocol.DEFAULT_PORT}" if found else (
        f"/path/to/ccexpert/.venv/bin/ccexpert serve --port {protocol.DEFAULT_PORT}")
    return (f"no command starts a local backend yet: enter one under Local backend (e.g. {example}), or run "
            f"`ccexpert serve --host 127.0.0.1 --port {protocol.DEFAULT_PORT}` in a terminal of the project's "
            f"environment and use http://127.0.0.1:{protocol.DEFAULT_PORT}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_arguments(command: str, model: str) -> tuple[str, list[str], int]:
    """(program, arguments, port) for ``command`` with the model, host and port it lacks added."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise CaptionRunError(f"the local backend command cannot be read: {error}") from None
    if not words:
        raise CaptionRunError(how_to_start())
    if "serve" not in words:
        raise CaptionRunError(
            f"the local backend command must run `ccexpert serve` (e.g. {words[0]} serve --port 8000), not "
            f"'{command}'"
        )
    port = None
    for index, word in enumerate(words):
        if word == "--port" and index + 1 < len(words):
            port = words[index + 1]
        elif word.startswith("--port="):
            port = word.split("=", 1)[1]
        elif word == "--host" or word.startswith("--host="):
            raise CaptionRunError("the local backend listens on 127.0.0.1: leave --host out of its command")
    if port is None:
        port = str(_free_port())
        words += ["--port", port]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CaptionRunError(f"the local backend's --port must be a number from 1 to 65535, not '{port}'")
    if model.strip():
        if "--model" in words or any(word.startswith("--model=") for word in words):
            raise CaptionRunError("the model is given twice: in the command (--model) and in the Model field")
        words += ["--model", model.strip()]
    return words[0], [*words[1:], "--host", "127.0.0.1"], int(port)


class LocalBackend(QObject):
    """One ``ccexpert serve`` process at a time. ``ready`` carries its URL once ``/v1/health`` answers, ``failed``
    why it did not start (or stopped by itself)."""

    ready = pyqtSignal(str)
    failed = pyqtSignal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process: QProcess | None = None
        self.url = ""
        self.log = Path(QgsApplication.qgisSettingsDirPath()) / "ccexpert-serve.log"
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._waited_ms = 0
        self._reply: QNetworkReply | None = None
        self._ready = False

    @property
    def running(self) -> bool:
        """Whether the process is there (starting or ready)."""
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    @property
    def is_ready(self) -> bool:
        """Whether it answers at :attr:`url`."""
        return self.running and self._ready

    def start(self, settings: LocalBackendSettings) -> str:
        """Start the backend (stopping one started before); returns the URL it will answer at. Raises
        :class:`CaptionRunError` where no usable command is configured."""
        program, arguments, port = serve_arguments(settings.command, settings.model)
        self.stop()
        self.url = f"http://127.0.0.1:{port}"
        self._ready, self._waited_ms = False, 0
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        process.setStandardOutputFile(str(self.log))
        process.errorOccurred.connect(self._error)
        process.finished.connect(self._finished)
        self.process = process
        process.start(program, arguments)
        self._timer.start()
        return self.url

    def stop(self) -> None:
        """Stop the backend (SIGTERM, then kill if it lingers) and wait for it to end."""
        self._timer.stop()
        process, self.process = self.process, None
        self._ready = False
        if process is None:
            return
        process.finished.disconnect(self._finished)
        process.errorOccurred.disconnect(self._error)
        if process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            if not process.waitForFinished(STOP_TIMEOUT_MS):
                process.kill()
                process.waitForFinished(STOP_TIMEOUT_MS)
        process.deleteLater()

    def _poll(self) -> None:
        self._waited_ms += POLL_MS
        if self._waited_ms > START_TIMEOUT_S * 1000:
            self._fail(f"the local backend did not answer within {START_TIMEOUT_S:g} s (its log: {self.log})")
            return
        if self._reply is not None:  # the previous question is still open
            return
        request = QNetworkRequest(QUrl(self.url + protocol.HEALTH_PATH))
        request.setTransferTimeout(POLL_MS * 4)
        manager = QgsNetworkAccessManager.instance()
        assert manager is not None, "QGIS always has a network access manager"
        self._reply = manager.get(request)
        self._reply.finished.connect(self._answered)

    def _answered(self) -> None:
        reply, self._reply = self._reply, None
        if reply is None:
            return
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        content = bytes(reply.readAll())
        reply.deleteLater()
        if status != 200 or not self.running:
            return
        try:
            health = json.loads(content)
        except ValueError:
            return
        if isinstance(health, dict) and health.get("model_loaded", True):
            self._timer.stop()
            self._ready = True
            self.ready.emit(self.url)

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            self._fail(f"the local backend command could not start ({self.process.program()}: "
                       f"{self.process.errorString()}): check its path under Local backend")

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._fail(f"the local backend stopped (exit code {code}): {self._log_tail()} (log: {self.log})")

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1] if lines else "no output"

    def _fail(self, message: str) -> None:
        self.stop()
        self.failed.emit(message)
