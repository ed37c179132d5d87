"""Start the stand-in GPU backend (``bench/standin_backend.py``: sleeps per batch, runs no model) for a test.

Standard library and pytest only, so that the QGIS suite can use it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

STANDIN = Path(__file__).resolve().parents[1] / "bench" / "standin_backend.py"


@dataclass
class StandIn:
    """A running stand-in backend."""

    url: str
    process: subprocess.Popen

    def stats(self) -> dict:
        """What it saw: requests, pairs, the most requests open at once, batches."""
        with urllib.request.urlopen(self.url + "/standin/stats", timeout=10) as response:
            return json.load(response)

    def release(self) -> None:
        """Answer the requests it holds (``--hold-after-requests``) and every later one."""
        request = urllib.request.Request(self.url + "/standin/release", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        """Stop it (by its PID)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def start_standin(request: pytest.FixtureRequest, *args: str, python: str = sys.executable) -> StandIn:
    """A stand-in on 127.0.0.1 with ``args`` (e.g. ``--batch-s 0.2``), stopped when the test ends."""
    process = subprocess.Popen([python, str(STANDIN), *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().split()
    if line[:1] != ["ready"]:
        process.kill()
        pytest.fail(f"the stand-in backend did not start ({line})")
    standin = StandIn(f"http://127.0.0.1:{line[1]}", process)
    request.addfinalizer(standin.stop)
    return standin
