"""A real Ray cluster for the Ray tests: ``ray start --head --block`` in a folder of its own, on free ports.

Its own temporary folder keeps it apart from any other Ray on the machine (``/tmp/ray`` and its "current cluster"
file are left alone); stopping it with SIGTERM stops every process it started, and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve_process import free_port, server_env

STARTED = "Ray runtime started"
#: How long ``ray start --block`` may take to stop its processes on SIGTERM.
STOP_S = 10.0


@dataclass
class Cluster:
    """A running head node (the whole cluster, here)."""

    address: str
    process: subprocess.Popen
    folder: Path

    def stop(self) -> None:
        """SIGTERM to ``ray start --block``, which stops its processes; whatever of its session lingers after
        :data:`STOP_S` is killed (the session holds the cluster's processes and nothing else). The folder goes too."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(num_cpus: int, python: Path = Path(sys.executable), cwd: Path | None = None,
                  timeout_s: float = 120.0) -> Cluster:
    """Start a head node with ``num_cpus`` logical CPUs whose workers run ``python``; return once it is up."""
    # A short path: Ray's sockets live under it, and a Unix socket path holds at most 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="ccx-ray-"))
    port = free_port()
    log = folder / "head.log"
    command = [
        str(python), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(port), "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(folder),
        "--include-dashboard", "false", "--dashboard-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
    ]
    with log.open("wb") as sink:
        # A session of its own: the cluster's processes can be told apart from the tests' (and killed at the end).
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd or folder,
                                   env=server_env(), start_new_session=True)
    cluster = Cluster(f"127.0.0.1:{port}", process, folder)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if STARTED in log.read_text(errors="replace"):
            return cluster
        time.sleep(0.5)
    cluster.stop()
    pytest.fail(f"ray start did not finish within {timeout_s:g} s")
