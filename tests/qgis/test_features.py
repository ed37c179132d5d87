"""What analysts filter by, from a scripted backend: the kind of change is the backend's where it sends one, else
the caption's words (the bundled ``captions.change_kind``); the dates typed are on every feature and in the run
options with the command's key, so a rerun with other dates is refused rather than mixed in."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qgis_plugin.job import Job, RasterInput, run_job
from qgis_plugin.shared_modules import protocol

from conftest import Feedback
from rasters import write_pair

CAPTIONS = {
    "r0_c0": {"caption": "a road has been built along the river", "change_detected": True},
    "r0_c1": {"caption": "some houses appear", "change_detected": True, "change_kind": "water"},  # the model's say
    "r1_c0": {"caption": "the scene is the same as before", "change_detected": False},
    "r1_c1": {"caption": "something odd happened", "change_detected": True},  # no subject a kind names
}


class _Scripted(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"api_version": protocol.API_VERSION, "model_id": "scripted", "model_name": "scripted",
                    "model_note": None, "limits": protocol.Limits().to_dict()})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ids = [i.decode() for i in re.findall(rb'name="tile_ids"\r\n\r\n([^\r]*)\r\n', body)]
        self._send({"model_id": "scripted", "results": [
            {**CAPTIONS[tile_id], "confidence": 0.5, "tile_id": tile_id} for tile_id in ids
        ]})

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def backend(qgis_app) -> Iterator[_Scripted]:
    server = _Scripted()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_kind_of_change_and_dates_are_attributes_and_the_dates_a_run_option(
    backend: _Scripted, tmp_path: Path
) -> None:
    before, after = write_pair(tmp_path, 256)
    output = tmp_path / "out.gpkg"
    job = Job(rasters=(RasterInput.from_source(str(before)), RasterInput.from_source(str(after))),
              dates=("2019-05", "2021"), output=str(output), backend_urls=(backend.url,), tile_size=128)
    summary = run_job(job, Feedback())
    assert summary.error is None and summary.counts["captioned"] == 4
    with sqlite3.connect(output) as connection:
        features = dict(connection.execute("SELECT tile_id, change_kind FROM captions").fetchall())
        dated = set(connection.execute("SELECT date_before, date_after FROM captions").fetchall())
        options = dict(connection.execute("SELECT key, value FROM ccexpert_run_options").fetchall())
    assert features == {"r0_c0": "roads", "r0_c1": "water", "r1_c0": None, "r1_c1": None}
    assert dated == {("2019-05", "2021")}
    assert options["dates"] == "2019-05=before.tif;2021=after.tif"  # as caption-region --date writes it
    again = run_job(replace(job, dates=("2019", "2021")), Feedback())
    assert again.error and "holds tiles made with other options (dates: 2019-05=before.tif;2021=after.tif there" \
        in again.error
