"""Files served over HTTP for a test, as object storage serves COGs: bench/range_server.py (range requests,
counted, failing on request) in a process of its own, on 127.0.0.1.

The server runs apart because GDAL may hold Python's lock while it waits for a remote file: a server thread in the
test's process could then never answer. Standard library and pytest only, so that the QGIS suite uses it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[1] / "bench" / "range_server.py"


@dataclass
class RangeFiles:
    """A running server of one folder's files."""

    url: str
    process: subprocess.Popen

    def _control(self, action: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/_control/{action}", timeout=10) as response:
            return json.loads(response.read() or b"{}") if action == "stats" else {}

    def stats(self) -> dict:
        """What it served: requests and bytes, in all and by path, and the requests it dropped or refused."""
        return self._control("stats")

    def requests(self, name: str) -> int:
        """Requests for the file ``name`` so far."""
        return self.stats()["by_path"].get(f"/{name}", {}).get("requests", 0)

    def fail(self, name: str, *, offset: int | None = None, first: int | None = None) -> None:
        """Drop every request for ``name`` whose range holds byte ``offset`` (or every one from its ``first``-th
        on) until :meth:`heal`."""
        which = f"offset={offset}" if offset is not None else f"from={first}"
        self._control(f"fail?path=/{name}&{which}")

    def heal(self) -> None:
        """Answer every request again."""
        self._control("heal")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def serve(request: pytest.FixtureRequest, folder: Path, *args: str) -> RangeFiles:
    """``folder``'s files at ``http://127.0.0.1:PORT/NAME`` (``args``: the server's options), stopped when the test
    ends (run by this Python: the server needs only the standard library)."""
    process = subprocess.Popen([sys.executable, str(SERVER), str(folder), *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().split()
    if line[:1] != ["ready"]:
        process.kill()
        pytest.fail(f"the range server did not start ({line})")
    files = RangeFiles(f"http://127.0.0.1:{line[1]}", process)
    request.addfinalizer(files.stop)
    return files
