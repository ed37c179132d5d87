"""A real ``ccexpert serve`` process on 127.0.0.1 for tests: start it, wait for /v1/health, stop it.

Standard library and pytest only: the main suite (.venv) and the QGIS plugin suite (.venv-qgis, Debian's Python
without the project installed) both start their backends with it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

HEALTH_PATH = "/v1/health"


@dataclass
class ServeProcess:
    """A running ``ccexpert serve``."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment for a server: offline, no telemetry."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}


def start_serve(
    ccexpert: Path,
    args: list[str],
    log: Path,
    timeout_s: float = 240.0,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> ServeProcess:
    """Start ``ccexpert serve ARGS --host 127.0.0.1 --port P`` and return once /v1/health answers.

    ``env`` adds to :func:`server_env`; ``preexec_fn`` runs in the child before ``ccexpert`` starts (e.g. to lower
    its resource limits).
    """
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(ccexpert), "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env={**server_env(), **(env or {})}, preexec_fn=preexec_fn,
        )
    server = ServeProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            pytest.fail(f"ccexpert serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + HEALTH_PATH, timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    pytest.fail(f"ccexpert serve did not answer within {timeout_s:g} s:\n{log.read_text()[-3000:]}")
