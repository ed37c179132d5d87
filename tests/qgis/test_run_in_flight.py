"""The plugin keeps a GPU busy and holds on: several requests in flight through QGIS's network stack, Cancel and
resume, several backends with one dying, the layer on the map while the run goes (reopened only while the writer
waits: no "Cannot reopen datasource"), a backend that dies said at once and the run's summary the message bar's last
word, a backend restarted mid-run, the output never an input, one run per output, and the backend decoding exactly
the pixels the plugin read.

Backends here are the stand-in GPU backend (bench/standin_backend.py: a real HTTP server that sleeps per model batch
instead of running a model; standard library only, so it runs on Debian's Python like this suite).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import Qgis, QgsApplication, QgsProject, QgsTask

from qgis_plugin import classFactory
from qgis_plugin import plugin as plugin_module
from qgis_plugin import task as task_module
from qgis_plugin.captions_gpkg import CaptionsGeoPackage
from qgis_plugin.errors import CaptionRunError
from qgis_plugin.job import Job, RasterInput, RunProgress, run_job
from qgis_plugin.params import CaptionParams, parse_backend_urls
from qgis_plugin.plugin import CCExpertPlugin
from qgis_plugin.png import encode_tile
from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import protocol, run_files
from qgis_plugin.tile_reader import RasterSeriesReader

from conftest import REPO, VENV_PYTHON, Feedback, add_raster, require_project_venv, wait_until
from rasters import write_pair
from standin import start_standin

sys.path.insert(0, str(REPO / "bench"))
from standin_backend import caption_for  # noqa: E402

SIZE, TILE = 256, 64
TILES = [f"r{r}_c{c}" for r in range(4) for c in range(4)]


@pytest.fixture(scope="module")
def plugin(qgis_iface, auth_ready) -> Iterator[CCExpertPlugin]:
    """The plugin from the repository, started as QGIS starts it."""
    started = classFactory(qgis_iface)
    started.initGui()
    yield started
    started.unload()


@pytest.fixture(autouse=True)
def fresh_messages(qgis_iface) -> None:
    qgis_iface.messageBar().clear_messages()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A before/after pair of 256 px: 16 tiles of 64 px."""
    return write_pair(tmp_path_factory.mktemp("scene"), SIZE)


def job(scene: tuple[Path, Path], output: Path, *urls: str, **changes) -> Job:
    """A headless job over the scene's 16 tiles."""
    values = {
        "rasters": (RasterInput.from_source(str(scene[0])), RasterInput.from_source(str(scene[1]))),
        "output": str(output), "backend_urls": urls, "tile_size": TILE, "batch_size": 1,
    }
    return Job(**{**values, **changes})


def params(project: QgsProject, scene: tuple[Path, Path], output: Path, url: str, **changes) -> CaptionParams:
    """What the dialog would collect for the scene (no token: the stand-in needs none)."""
    before, after = add_raster(project, scene[0], "before"), add_raster(project, scene[1], "after")
    return CaptionParams(**{"layer_ids": (before.id(), after.id()), "tile_size": TILE, "backend_url": url,
                            "output": str(output), "batch_size": 1, **changes})


def stored(output: Path) -> list[tuple[str, str, str]]:
    """(tile_id, status, caption) of every feature, by tile id."""
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR)
    features = [(f["tile_id"], f["status"], f["caption"]) for f in dataset.GetLayerByName("captions")]
    return sorted(features)


def every_tile_once_captioned_by_the_standin(output: Path) -> bool:
    return stored(output) == [(tile, "captioned", caption_for(tile)[0]) for tile in sorted(TILES)]


def test_backend_urls_are_one_per_line_or_comma_separated_each_once() -> None:
    urls = parse_backend_urls("http://a:8000, http://b:8000/\n\nhttp://a:8000\nhttps://c")
    assert urls == ("http://a:8000", "http://b:8000", "https://c")
    with pytest.raises(CaptionRunError, match="must start with http"):
        parse_backend_urls("http://a:8000, ftp://b")
    with pytest.raises(CaptionRunError, match="give the URL of a backend"):
        parse_backend_urls(" , \n")


def test_the_standin_sees_several_requests_open_at_once_from_the_plugins_job(
    qgis_app, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    standin = start_standin(request, "--batch-s", "0.2", "--max-batch", "16", python=sys.executable)
    output = tmp_path / "out.gpkg"
    summary = run_job(job(scene, output, standin.url), Feedback())
    assert summary.error is None and summary.counts["captioned"] == len(TILES)
    stats = standin.stats()
    # Default: requests for three model batches (3 × 16 / 1), so the whole area is asked for at once.
    assert stats["max_open_requests"] >= 3
    assert stats["pairs"] == len(TILES) and stats["mean_batch_size"] > 1  # requests merged into model batches
    assert every_tile_once_captioned_by_the_standin(output)


def test_cancel_is_reported_as_canceled_and_a_resume_writes_every_tile_once(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    # It answers one request and holds the later ones: the run is canceled with batches in flight, however busy
    # the machine (it cannot end before).
    standin = start_standin(request, "--batch-s", "0", "--max-batch", "2", "--hold-after-requests", "1",
                            python=sys.executable)
    output = tmp_path / "canceled.gpkg"
    chosen = params(project, scene, output, standin.url)
    task = plugin.start(chosen)
    ended = []
    task.taskCompleted.connect(lambda: ended.append("completed"))
    task.taskTerminated.connect(lambda: ended.append("terminated"))
    wait_until(lambda: task.progress() > 0 and standin.stats()["held"] >= 2, "batches in flight")
    task.cancel()
    wait_until(lambda: task not in plugin.tasks and ended, "the canceled task to end")
    assert ended == ["completed"]  # not "Task failed", which QGIS shows for a task whose run() returns False
    assert task.summary.canceled and task.summary.error is None
    (warning,) = plugin.iface.messageBar().get_messages(Qgis.Warning)
    assert "Canceled." in warning and "run again to resume" in warning
    kept = stored(output)
    assert 1 <= len(kept) < len(TILES) and len({tile for tile, _, _ in kept}) == len(kept)

    standin.release()
    second = plugin.start(chosen)
    wait_until(lambda: second not in plugin.tasks, "the resumed task")
    assert second.summary.already_done == len(kept) and second.summary.written == len(TILES) - len(kept)
    assert every_tile_once_captioned_by_the_standin(output)


def test_one_of_two_standin_backends_dying_mid_run_hands_its_batches_to_the_other(
    qgis_app, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    dying = start_standin(request, "--batch-s", "0.1", "--die-after-requests", "3", python=sys.executable)
    steady = start_standin(request, "--batch-s", "0.1", python=sys.executable)
    output = tmp_path / "two.gpkg"
    feedback = Feedback()
    summary = run_job(job(scene, output, dying.url, steady.url, in_flight=2), feedback)
    assert summary.error is None, summary.error
    assert dying.process.wait(timeout=10) != 0  # it really died
    assert any("its batches go to the other backends" in m for m in feedback.messages)
    assert every_tile_once_captioned_by_the_standin(output)  # nothing lost, nothing twice
    assert set(summary.by_backend) == {dying.url, steady.url} and sum(summary.by_backend.values()) == len(TILES)
    answered = summary.by_backend[dying.url]  # before dying on its 4th request (one of its 3 may still be open)
    assert 1 <= answered <= 3
    assert f"{dying.url}: {answered}" in summary.message()
    assert f"{steady.url}: {len(TILES) - answered}" in summary.message()


def test_the_layer_is_on_the_map_from_the_first_batches_and_grows_with_its_counts_in_its_name(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    standin = start_standin(request, "--batch-s", "0.25", "--max-batch", "1", python=sys.executable)
    output = tmp_path / "live.gpkg"
    task = plugin.start(params(project, scene, output, standin.url, dates=("2019", "2021")))
    seen: list[tuple[int, int, int, str]] = []  # (tiles done, layers, features shown, name) after the plugin's slot

    def look(progress: RunProgress, window: object) -> None:  # no assert here: an exception in a slot aborts QGIS
        shown = [layer for layer in project.mapLayers().values() if layer.source().startswith(str(output))]
        if shown:
            seen.append((progress.done, len(shown), shown[0].featureCount(), shown[0].name()))

    task.batch_written.connect(look)
    wait_until(lambda: task not in plugin.tasks, "the run")
    during = [entry for entry in seen if entry[0] < len(TILES)]
    assert during and during[0][0] <= 2 and {layers for _, layers, _, _ in seen} == {1}  # from the start, once
    counts = [features for _, _, features, _ in during]
    assert counts == sorted(counts) and len(set(counts)) >= 3 and 0 < counts[-1] < len(TILES)  # growing
    done, _, _, name = during[-1]
    assert name.startswith(f"CCExpert 2019→2021 — running: {done} of {len(TILES)} tiles, ")
    assert re.search(r"\d+ changed, \d+ unchanged, 0 skipped \(no data\), 0 failed \(run again\)$", name)
    (layer,) = [layer for layer in project.mapLayers().values() if layer.source().startswith(str(output))]
    assert layer.name() == "CCExpert 2019→2021" and layer.featureCount() == len(TILES)  # the plain title at the end


def test_the_layer_is_reopened_only_while_the_writer_waits_so_no_critical_message_comes(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request, monkeypatch,
) -> None:
    # The most reloads there can be: one after every batch, each waited for (so none is skipped), 64 batches.
    monkeypatch.setattr(task_module, "REFRESH_S", 0.0)
    monkeypatch.setattr(task_module, "WINDOW_WAIT_S", 300.0)
    writes: list[int] = []  # 1 while a batch is being written
    clashes: list[str] = []
    reloads: list[int] = []
    write, show = CaptionsGeoPackage.write, plugin_module.LiveLayer._show

    def writing(self, *args, **kwargs):
        writes.append(1)
        try:
            return write(self, *args, **kwargs)
        finally:
            writes.pop()

    def showing(self, layer):
        if writes:
            clashes.append("the layer was reopened while a batch was being written")
        reloads.append(1)
        return show(self, layer)

    monkeypatch.setattr(CaptionsGeoPackage, "write", writing)
    monkeypatch.setattr(plugin_module.LiveLayer, "_show", showing)
    critical: list[str] = []

    def logged(message: str, tag: str, level) -> None:
        if level == Qgis.MessageLevel.Critical:
            critical.append(f"{tag}: {message}")

    log = QgsApplication.messageLog()
    log.messageReceived.connect(logged)
    request.addfinalizer(lambda: log.messageReceived.disconnect(logged))
    standin = start_standin(request, "--batch-s", "0.01", python=sys.executable)
    output = tmp_path / "reloaded.gpkg"
    task = plugin.start(params(project, scene, output, standin.url, tile_size=32, in_flight=4))
    wait_until(lambda: task not in plugin.tasks, "the run")
    assert task.summary.error is None and task.summary.written == 64
    assert not clashes and not critical and not plugin.iface.messageBar().get_messages(Qgis.Critical)
    assert len(reloads) >= 64  # the layer was added, then reloaded after each batch
    (layer,) = [layer for layer in project.mapLayers().values() if layer.source().startswith(str(output))]
    assert layer.featureCount() == 64


def test_a_backend_that_dies_is_said_at_once_and_the_runs_summary_is_the_last_word(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    manager = QgsApplication.taskManager()
    bar = plugin.iface.messageBar()
    said: list[str] = []  # everything the bar was told, in order
    push = bar.pushMessage

    def recorded(title, text, *args):
        said.append(f"{title}: {text}")
        return push(title, text, *args)

    def qgis_notice(task_id: int, status: int) -> None:  # what QGIS's main window says when a task ends
        if status in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated):
            said.append("QGIS: Task complete")

    # QGIS's window connects its notice when it starts, before any plugin: connect it first here too.
    manager.statusChanged.disconnect(plugin._task_status)
    manager.statusChanged.connect(qgis_notice)
    manager.statusChanged.connect(plugin._task_status)
    request.addfinalizer(lambda: manager.statusChanged.disconnect(qgis_notice))
    bar.pushMessage = recorded
    request.addfinalizer(lambda: delattr(bar, "pushMessage"))
    standin = start_standin(request, "--batch-s", "0", "--max-batch", "1", "--hold-after-requests", "1",
                            python=sys.executable)
    # A long retry budget: the run is still trying when the test looks (it cancels it then).
    task = plugin.start(params(project, scene, tmp_path / "dies.gpkg", standin.url, in_flight=1,
                               retry_budget_s=3600.0))
    wait_until(lambda: task.progress() > 0 and standin.stats()["held"] >= 1, "the first batch, the next held")
    standin.stop()  # killed, with a request open
    wait_until(lambda: bar.items() or task not in plugin.tasks, "the run to say the backend does not answer")
    assert task in plugin.tasks  # still trying, and it says so
    (item,) = bar.items()
    assert item.level() == Qgis.MessageLevel.Warning and f"the backend at {standin.url}" in item.text()
    assert re.search(r"Trying again until \d\d:\d\d:\d\d \(3600 s\); then the run stops", item.text())
    assert task.description() == f"CCExpert: {task.title} — {item.text()}"
    task.cancel()
    wait_until(lambda: task not in plugin.tasks, "the canceled run")
    assert not bar.items() and task.description() == f"CCExpert: {task.title}"  # the warning is taken back
    assert said[-2] == "QGIS: Task complete" and said[-1].startswith(f"{task.title}: Canceled.")


@pytest.mark.slow
def test_the_retry_budget_outlasts_a_backend_restarted_20_s_later(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    first = start_standin(request, "--batch-s", "0", "--max-batch", "1", "--hold-after-requests", "1",
                          python=sys.executable)
    port = first.url.rsplit(":", 1)[1]
    output = tmp_path / "restarted.gpkg"
    task = plugin.start(params(project, scene, output, first.url))
    wait_until(lambda: task.progress() > 0 and first.stats()["held"] >= 1, "the first batch, the next held")
    first.stop()
    down_at = time.monotonic()
    wait_until(lambda: time.monotonic() - down_at > 20 or task not in plugin.tasks, "20 s of a backend down")
    assert task in plugin.tasks  # still trying
    start_standin(request, "--port", port, "--batch-s", "0.05", python=sys.executable)
    wait_until(lambda: task not in plugin.tasks, "the run to finish on the restarted backend")
    assert task.summary.error is None and not task.summary.canceled
    assert every_tile_once_captioned_by_the_standin(output)


def test_an_output_that_is_an_input_raster_is_refused_and_left_as_it_was(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path,
) -> None:
    copy = tmp_path / "before.tif"
    copy.write_bytes(scene[0].read_bytes())
    summary = run_job(job((copy, scene[1]), copy, "http://127.0.0.1:9"), Feedback())  # no backend is asked
    assert summary.error and "is the same file as the BEFORE raster" in summary.error
    assert copy.read_bytes() == scene[0].read_bytes()
    # From the dialog's path too, before any task starts.
    assert plugin.start(params(project, (copy, scene[1]), copy, "http://127.0.0.1:9")) is None
    (error,) = plugin.iface.messageBar().get_messages(Qgis.Critical)
    assert "choose another path for the output GeoPackage" in error
    assert copy.read_bytes() == scene[0].read_bytes()


def test_a_second_run_on_an_output_being_written_is_refused_with_a_clear_message(
    plugin: CCExpertPlugin, project: QgsProject, scene: tuple[Path, Path], tmp_path: Path, request,
) -> None:
    standin = start_standin(request, "--batch-s", "0", "--max-batch", "1", "--hold-after-requests", "1",
                            python=sys.executable)
    output = tmp_path / "busy.gpkg"
    task = plugin.start(params(project, scene, output, standin.url))
    wait_until(lambda: task.progress() > 0 and standin.stats()["held"] >= 1, "the first run, held mid-way")
    second = run_job(job(scene, output, standin.url), Feedback())
    assert second.error and f"{output} is being written by another run (the CCExpert QGIS plugin" in second.error
    assert second.written == 0
    standin.release()
    wait_until(lambda: task not in plugin.tasks, "the first run")
    assert task.summary.error is None and every_tile_once_captioned_by_the_standin(output)
    assert not output.with_name(output.name + run_files.LOCK_SUFFIX).exists()  # released


class _Capture(ThreadingHTTPServer):
    """A backend that answers every pair and keeps each captions request's body."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.bodies: list[tuple[bytes, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CaptureHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"api_version": protocol.API_VERSION, "model_id": "capture", "limits": protocol.Limits().to_dict()})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append((body, self.headers["Content-Type"]))
        ids = re.findall(rb'name="tile_ids"\r\n\r\n([^\r]*)\r\n', body)
        self._send({"model_id": "capture", "results": [
            {"caption": "seen", "change_detected": False, "confidence": 0.5, "tile_id": i.decode()} for i in ids
        ]})

    def log_message(self, *args: object) -> None:
        """Quiet."""


def _images(body: bytes, content_type: str) -> dict[str, tuple[bytes, bytes]]:
    """tile id → (before, after) image bytes of a multipart captions body."""
    boundary = content_type.split("boundary=")[1].encode()
    fields: dict[str, list[bytes]] = {}
    for part in body.split(b"--" + boundary)[1:-1]:
        headers, data = part[2:-2].split(b"\r\n\r\n", 1)
        name = re.search(rb'name="([^"]+)"', headers).group(1).decode()
        fields.setdefault(name, []).append(data)
    ids = [tile_id.decode() for tile_id in fields[protocol.FIELD_TILE_IDS]]
    return dict(zip(ids, zip(fields[protocol.FIELD_BEFORE], fields[protocol.FIELD_AFTER])))


def test_the_backend_decodes_exactly_the_pixels_the_plugin_read(qgis_app, tmp_path: Path) -> None:
    require_project_venv()
    before, after = write_pair(tmp_path, 768, seed=3)  # four tiles of the model's 384 px
    capture = _Capture()
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    try:
        summary = run_job(job((before, after), tmp_path / "out.gpkg", capture.url, tile_size=384, batch_size=2),
                          Feedback())
    finally:
        capture.shutdown()
        capture.server_close()
    assert summary.error is None and summary.counts["captioned"] == 4
    sent = {tile: images for body in capture.bodies for tile, images in _images(*body).items()}
    with RasterSeriesReader([str(before), str(after)], ["BEFORE", "AFTER"]) as pair:
        tiles = tiling.TileGrid(pair.grid.width, pair.grid.height, pair.grid.transform, 384).tiles()
        pair.fit_stretch(tiles, None)
        read = {tile.tile_id: [rgb for rgb, _ in pair.read_dates(tile)] for tile in tiles}
    # What the run sent (TIFF: the backend is on this machine), and PNG as a remote backend would get it.
    files = {}
    for tile_id, (before_rgb, after_rgb) in read.items():
        for role, rgb, sent_bytes in (("before", before_rgb, sent[tile_id][0]), ("after", after_rgb,
                                                                                 sent[tile_id][1])):
            assert sent_bytes == encode_tile(rgb, compress=False)
            for kind, data in (("tiff", sent_bytes), ("png", encode_tile(rgb, compress=True))):
                path = tmp_path / f"{tile_id}-{role}.{kind}"
                path.write_bytes(data)
                files[str(path)] = rgb
    # The backend's own decoding (Pillow, in the project's .venv), and GDAL's here.
    decode = (
        "import json, sys, numpy as np\n"
        "from backend.limits import decode_image\n"
        "from ccexpert_core.protocol import Limits\n"
        "paths = json.loads(sys.argv[1])\n"
        "np.savez(sys.argv[2], *[np.asarray(decode_image(open(p, 'rb').read(), Limits(), 384, p)) for p in paths])\n"
    )
    decoded = tmp_path / "decoded.npz"
    subprocess.run([str(VENV_PYTHON), "-c", decode, json.dumps(list(files)), str(decoded)], check=True,
                   capture_output=True, cwd=REPO)
    with np.load(decoded) as arrays:
        for index, (path, rgb) in enumerate(files.items()):
            assert np.array_equal(arrays[f"arr_{index}"], rgb), path
            assert np.array_equal(gdal.Open(path).ReadAsArray().transpose(1, 2, 0), rgb), path
