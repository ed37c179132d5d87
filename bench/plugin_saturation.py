"""Does the QGIS plugin keep a GPU busy? Its run (``run_job``, headless, as the task and Processing run it) against
the stand-in GPU backend (``bench/standin_backend.py``: sleeps per model batch, no model), and where a tile's time
goes on the client.

Run with QGIS's Python (the plugin's own environment)::

    .venv-qgis/bin/python bench/plugin_saturation.py                          # this working tree's plugin
    .venv-qgis/bin/python bench/plugin_saturation.py --root /tmp/plugin-before  # another checkout's (e.g. HEAD)

``--real-backend`` adds a run against ``ccexpert serve`` with the demo model (from the project's ``.venv``), against
that backend's own pairs/s when an ideal client feeds it (requests built beforehand, as many open as the plugin
keeps by default); on this
machine the backend shares the CPU with the plugin, so the share is only indicative.

Two stand-ins: 16 pairs per 0.5 s (capacity 32 pairs/s, a small GPU) and one that answers at once (``--batch-s 0``),
which gives the client's own ceiling. Tiles/s are tiles / (run − fixed cost), the fixed cost being a resume of the
finished output (backend info, rasters, output and lock: everything but the tiles), as region_saturation.py counts
for the command; the whole run's rate is given too. The per-tile split is CPU time per tile (``time.thread_time`` in whichever thread ran the stage, so contention between
threads does not inflate it), from a second run against the instant stand-in with each stage wrapped; "other" is the
process's CPU time per tile not in any stage (Python glue, Qt's event handling, thread hand-offs). The stand-in runs
on the same 2 cores, so the instant case includes its CPU too.

The rasters are synthetic 8-bit RGB tiled GeoTIFFs (fields, roads, noise; AFTER with buildings), on one grid unless
``--aligned-after`` puts AFTER half a pixel off, so that every AFTER read is warped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin_backend.py"
TILE = 384


def write_rasters(folder: Path, columns: int, rows: int, shifted_after: bool) -> tuple[Path, Path]:
    """BEFORE and AFTER, ``columns`` × ``rows`` tiles of 384 px, 0.5 m pixels in EPSG:32631, tiled 256 px."""
    from osgeo import gdal, osr

    width, height = columns * TILE, rows * TILE
    rng = np.random.default_rng(0)
    palette = np.array([[88, 120, 60], [110, 140, 70], [140, 120, 80], [95, 110, 55]], np.float32)
    cells = rng.integers(0, len(palette), (height // 48 + 1, width // 48 + 1))
    scene = np.kron(palette[cells], np.ones((48, 48, 1), np.float32))[:height, :width]
    scene += rng.normal(0, 6, scene.shape).astype(np.float32)
    scene[:, ::192][:, :, :] = 150  # roads every 192 px
    after = scene.copy()
    for top in range(40, height - 40, 300):
        after[top : top + 30, 50 : width - 50 : 3] = (185, 75, 60)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    paths = []
    for name, image, offset in (("before", scene, 0.0), ("after", after, 0.25 if shifted_after else 0.0)):
        path = folder / f"{name}.tif"
        dataset = gdal.GetDriverByName("GTiff").Create(
            str(path), width, height, 3, gdal.GDT_Byte, ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"],
        )
        dataset.SetGeoTransform((431000.0 + offset, 0.5, 0.0, 4829000.0 - offset, 0.0, -0.5))
        dataset.SetProjection(srs.ExportToWkt())
        bands = np.clip(image, 0, 255).astype(np.uint8)
        for index in range(3):
            dataset.GetRasterBand(index + 1).WriteArray(bands[:, :, index])
        dataset = None
        paths.append(path)
    return paths[0], paths[1]


@contextlib.contextmanager
def standin(batch_s: float, max_batch: int, max_wait_ms: float) -> Iterator[str]:
    """A stand-in backend on 127.0.0.1 (Debian's Python, standard library only); its URL."""
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--batch-s", str(batch_s), "--max-batch", str(max_batch),
         "--max-wait-ms", str(max_wait_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None  # stdout=PIPE
    try:
        line = process.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"the stand-in did not start: {line}")
        yield f"http://127.0.0.1:{line[1]}"
    finally:
        process.kill()
        process.wait()


def standin_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/standin/stats", timeout=10) as answer:
        return json.load(answer)


class Feedback:
    """What run_job asks of its runner: never canceled, progress ignored, messages kept."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def isCanceled(self) -> bool:  # noqa: N802
        return False

    def setProgress(self, percent: float) -> None:  # noqa: N802
        pass

    def pushInfo(self, text: str) -> None:  # noqa: N802
        self.messages.append(text)


def make_job(job_module, before: Path, after: Path, output: Path, url: str, batch_size: int, in_flight: int | None):
    """A Job for whichever version of the plugin is imported (one backend URL, or a tuple of them)."""
    names = {f.name for f in dataclasses.fields(job_module.Job)}
    rasters = (job_module.RasterInput.from_source(str(before)), job_module.RasterInput.from_source(str(after)))
    values: dict[str, object] = {"output": str(output), "tile_size": TILE, "batch_size": batch_size}
    if "rasters" in names:  # a series-aware plugin
        values["rasters"] = rasters
    else:
        values["before"], values["after"] = rasters
    if "backend_urls" in names:
        values["backend_urls"] = (url,)
    else:
        values["backend_url"] = url
    if in_flight is not None:
        if "in_flight" not in names:
            raise SystemExit("this version of the plugin has no in_flight option")
        values["in_flight"] = in_flight
    return job_module.Job(**values)


def run(job_module, job) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of one run_job, and its summary (whichever plugin version's)."""
    wall, cpu = time.perf_counter(), time.process_time()
    summary = job_module.run_job(job, Feedback())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if summary.error:
        raise SystemExit(f"the run failed: {summary.error}")
    return wall, cpu, summary


# -- the per-tile split -------------------------------------------------------------------------------------------

class Stages:
    """CPU seconds spent in each wrapped stage, summed over threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def timed(self, stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with self._lock:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
        return wrapper

    def wrap(self, owner: object, name: str, stage: str) -> bool:
        """Wrap ``owner.name`` if it exists, and every plugin module's reference to the same function."""
        original = getattr(owner, name, None)
        if original is None:
            return False
        wrapped = self.timed(stage, original)
        targets = [owner] + [m for key, m in sys.modules.items() if key.startswith("qgis_plugin") and m is not owner]
        for target in targets:
            if getattr(target, name, None) is original:
                setattr(target, name, wrapped)
                self._undo.append(functools.partial(setattr, target, name, original))
        return True

    def undo(self) -> None:
        for restore in reversed(self._undo):
            restore()
        self._undo.clear()


def instrument(stages: Stages) -> None:
    """Wrap the plugin's stages, under whichever names this version has."""
    import qgis_plugin.backend_client as client
    import qgis_plugin.captions_gpkg as gpkg
    import qgis_plugin.tile_reader as reader
    from qgis_plugin import png
    from qgis_plugin.shared_modules import pixels

    stages.wrap(reader.DateSource, "_read", "GDAL read (and align, when warped)")
    stages.wrap(pixels, "to_rgb", "map to 8-bit RGB (bands, stretch, nodata)")
    for name in ("png_bytes", "encode_tile", "tiff_bytes"):
        stages.wrap(png, name, "encode both images")
    for name in ("multipart_body", "pairs_body", "series_body"):
        stages.wrap(client, name, "request body")
    stages.wrap(gpkg.CaptionsGeoPackage, "write", "GeoPackage write")

    blocking = client.QgsBlockingNetworkRequest
    timed_post = stages.timed("HTTP (client side)", blocking.post)

    def post(self, *args, **kwargs):
        return timed_post(self, *args, **kwargs)

    loads = stages.timed("parse answers (JSON)", json.loads)
    stand_ins = {
        "QgsBlockingNetworkRequest": type("TimedRequest", (blocking,), {"post": post}),
        "json": type("TimedJson", (), {"loads": staticmethod(loads), "dumps": staticmethod(json.dumps)}),
    }
    for name, stand_in in stand_ins.items():
        patcher = mock.patch.object(client, name, stand_in)
        patcher.start()
        stages._undo.append(patcher.stop)


def encoder_costs(before: Path, repeats: int = 20) -> list[tuple[str, float, int]]:
    """(encoder, CPU ms, KB) for one 384 px tile image: Qt's PNG encoder (default, and quality 80 = zlib level 1)
    against the plugin's PNG and TIFF writers (whichever this version has)."""
    from osgeo import gdal
    from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice
    from qgis.PyQt.QtGui import QImage

    from qgis_plugin import png

    rgb = np.ascontiguousarray(gdal.Open(str(before)).ReadAsArray(0, 0, TILE, TILE).transpose(1, 2, 0))

    def qt(quality: int) -> bytes:
        pixels = rgb.tobytes()
        image = QImage(pixels, TILE, TILE, 3 * TILE, QImage.Format_RGB888)
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.WriteOnly)
        image.save(buffer, "PNG", quality)
        return bytes(data)

    encoders = {"Qt PNG, default": lambda: qt(-1), "Qt PNG, quality 80 (zlib level 1)": lambda: qt(80)}
    if hasattr(png, "tiff_bytes"):
        encoders["plugin PNG (up filter, zlib level 1, run-length)"] = lambda: png.png_bytes(rgb)
        encoders["plugin TIFF (uncompressed)"] = lambda: png.tiff_bytes(rgb)
    costs = []
    for name, encode in encoders.items():
        data = encode()
        start = time.thread_time()
        for _ in range(repeats):
            encode()
        costs.append((name, 1000 * (time.thread_time() - start) / repeats, len(data) // 1024))
    return costs


def real_backend(job_module, before: Path, after: Path, folder: Path, args: argparse.Namespace) -> None:
    """The plugin against ``ccexpert serve`` (demo model) as a share of what that backend does for an ideal client."""
    from concurrent.futures import ThreadPoolExecutor

    from osgeo import gdal

    from qgis_plugin.backend_client import pairs_body
    from qgis_plugin.png import tiff_bytes
    from qgis_plugin.shared_modules import inflight

    sys.path.insert(0, str(HERE.parent / "tests"))
    from serve_process import start_serve

    server = start_serve(HERE.parent / ".venv" / "bin" / "ccexpert", ["--no-ui"], folder / "serve.log")
    try:
        rasters = [gdal.Open(str(path)) for path in (before, after)]

        def tile(raster, row: int, col: int) -> bytes:
            return tiff_bytes(raster.ReadAsArray(col * TILE, row * TILE, TILE, TILE).transpose(1, 2, 0).copy())

        pairs = [(tile(rasters[0], row, col), tile(rasters[1], row, col))
                 for row in range(args.rows) for col in range(args.columns)]
        size = args.batch_size
        requests = [pairs_body(pairs[i : i + size], [str(k) for k in range(i, min(i + size, len(pairs)))])
                    for i in range(0, len(pairs), size)]

        def send(request) -> None:
            post = urllib.request.Request(server.url + request.path, request.body,
                                          {"Content-Type": request.content_type})
            with urllib.request.urlopen(post, timeout=600) as answer:
                answer.read()

        with urllib.request.urlopen(server.url + "/v1/info", timeout=10) as answer:
            depth = args.in_flight or inflight.default_in_flight(json.load(answer), size)
        send(requests[0])  # the model's first batch is slow (allocations): not part of its pace
        start = time.perf_counter()
        with ThreadPoolExecutor(depth) as pool:
            list(pool.map(send, requests))
        capacity = len(pairs) / (time.perf_counter() - start)
        job = make_job(job_module, before, after, folder / "real.gpkg", server.url, args.batch_size, args.in_flight)
        wall, _, summary = run(job_module, job)
        assert summary.written == len(pairs), summary.message()
        fixed, _, _ = run(job_module, job)
    finally:
        server.stop()
    rate = len(pairs) / max(1e-6, wall - fixed)
    print()
    print("| ccexpert serve, demo model (same CPU) | requests open | backend alone, pairs/s | plugin, tiles/s | share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| {len(pairs)} tiles, batch {size} | {depth} | {capacity:.1f} | {rate:.1f} | {100 * rate / capacity:.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="checkout whose qgis_plugin/ to run")
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--in-flight", type=int, help="requests in flight (default: the plugin's own default)")
    parser.add_argument("--aligned-after", action="store_true", help="AFTER half a pixel off: every read warped")
    parser.add_argument("--repeats", type=int, default=3, help="runs per stand-in (the median is reported)")
    parser.add_argument("--real-backend", action="store_true", help="also against ccexpert serve with the demo model")
    args = parser.parse_args()

    sys.path.insert(0, str(args.root.resolve()))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("GDAL_PAM_ENABLED", "NO")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    import qgis_plugin.job as job_module

    print(f"# plugin from {inspect.getsourcefile(job_module)}")
    print(f"# {time.strftime('%a %d %b %Y %H:%M %Z')}, {platform.machine()} {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    tiles = args.columns * args.rows
    with tempfile.TemporaryDirectory() as folder:
        before, after = write_rasters(Path(folder), args.columns, args.rows, args.aligned_after)
        print(f"# {tiles} tiles of {TILE} px, batch {args.batch_size}, in flight {args.in_flight or 'default'}"
              f"{', AFTER warped' if args.aligned_after else ''}")
        print("| stand-in | capacity (pairs/s) | tiles/s (runs) | share | whole run, tiles/s | most requests open "
              "| mean model batch |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
        for batch_s in (0.5, 0.0):
            capacity = 16 / batch_s if batch_s else None
            rates, whole, stats = [], [], {}
            with standin(batch_s, 16, 20.0 if batch_s else 0.0) as url:
                for repeat in range(args.repeats):
                    output = Path(folder) / f"run-{batch_s}-{repeat}.gpkg"
                    job = make_job(job_module, before, after, output, url, args.batch_size, args.in_flight)
                    wall, _, summary = run(job_module, job)
                    assert summary.written == tiles, summary.message()
                    fixed, _, resumed = run(job_module, job)
                    assert resumed.written == 0, resumed.message()
                    rates.append(tiles / max(1e-6, wall - fixed))
                    whole.append(tiles / wall)
                stats = standin_stats(url)
            median = statistics.median(rates)
            share = f"{100 * median / capacity:.0f} %" if capacity else "(client ceiling)"
            label = f"{16} pairs per {batch_s:g} s" if batch_s else "answers at once"
            print(f"| {label} | {capacity or '∞'} | {median:.1f} ({', '.join(f'{r:.1f}' for r in rates)}) | {share} "
                  f"| {statistics.median(whole):.1f} | {stats['max_open_requests']} "
                  f"| {stats['mean_batch_size']:.1f} |")

        stages = Stages()
        instrument(stages)
        with standin(0.0, 16, 0.0) as url:
            job = make_job(job_module, before, after, Path(folder) / "split.gpkg", url, args.batch_size,
                           args.in_flight)
            wall, cpu, _ = run(job_module, job)
        stages.undo()
        print()
        print(f"| stage (instant stand-in, {tiles / wall:.1f} tiles/s instrumented) | CPU ms per tile |")
        print("| --- | ---: |")
        for stage, seconds in stages.seconds.items():
            print(f"| {stage} | {1000 * seconds / tiles:.1f} |")
        other = cpu - sum(stages.seconds.values())
        print(f"| other (glue, Qt events, hand-offs) | {1000 * other / tiles:.1f} |")
        print(f"| **process CPU per tile** | **{1000 * cpu / tiles:.1f}** |")
        print()
        print("| encoder, one 384 px image | CPU ms | KB |")
        print("| --- | ---: | ---: |")
        for name, milliseconds, kilobytes in encoder_costs(before):
            print(f"| {name} | {milliseconds:.2f} | {kilobytes} |")
        if args.real_backend:
            real_backend(job_module, before, after, Path(folder), args)
    app.exitQgis()


if __name__ == "__main__":
    main()
