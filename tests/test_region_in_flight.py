"""Several batches in flight: a backend sees several requests open at once, results written in the order they
complete give the same GeoPackage, an interrupted or killed run resumes with every tile once, one of two backends
dying hands its batches to the other, and what the backend decodes is exactly what was read.

Backends here are the stand-in GPU backend (bench/standin_backend.py: a real HTTP server that sleeps per batch
instead of running a model, since there is no GPU here), hence "standin" in the tests' names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ccexpert_cli as cli
from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.captions_layer import CAPTIONED, read_tiles
from ccexpert_core.geo.engine import Engine
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.inflight import Copies

from geo_fixtures import pair_pixels, write_pair
from standin import start_standin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from standin_backend import caption_for  # noqa: E402

CCEXPERT = Path(sys.executable).with_name("ccexpert")
TILES = 25  # a 160 px pair cut into 32 px tiles


def region_args(folder: Path, out: Path, *extra: str) -> list[str]:
    before, after = write_pair(folder, size=160)
    return ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "32", *extra]


def stored(out: Path) -> list[tuple[str, str | None, str]]:
    return sorted((t.tile_id, t.caption, t.status) for t in read_tiles(out))


def test_standin_backend_sees_several_requests_open_at_once(tmp_path: Path, request, capsys) -> None:
    standin = start_standin(request, "--batch-s", "0.2", "--max-batch", "16")
    out = tmp_path / "out.gpkg"
    code = cli.main(["caption-region", *region_args(tmp_path, out, "--batch-size", "2", "--backend", standin.url)])
    assert code == 0, capsys.readouterr().err
    stats = standin.stats()
    assert stats["max_open_requests"] >= 3
    assert stats["pairs"] == TILES and stats["mean_batch_size"] > 2  # requests were merged into model batches
    assert stored(out) == sorted((f"r{r}_c{c}", caption_for(f"r{r}_c{c}")[0], CAPTIONED)
                                 for r in range(5) for c in range(5))


class _Shuffling(Engine):
    """Takes ``in_flight`` batches at once and answers later ones first (each waits a time that falls with its
    order), recording the order answers were given in."""

    model_id = "shuffling"

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.answered: list[str] = []
        self._lock = threading.Lock()
        self._calls = 0

    def caption(self, pairs, tile_ids) -> list[CaptionResult]:
        with self._lock:
            self._calls += 1
            delay = 0.05 * (4 - self._calls % 4)
        time.sleep(delay)
        with self._lock:
            self.answered.extend(tile_ids)
        return [CaptionResult.from_caption(f"seen {i}", 0.5) for i in tile_ids]


def test_writes_in_completion_order_give_the_same_geopackage(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=160)
    options = RegionOptions(tile_size=32, batch_size=2)
    in_order, shuffled = _Shuffling(in_flight=1), _Shuffling(in_flight=4)
    caption_region(before, after, tmp_path / "a.gpkg", lambda: on_this_machine(in_order), options, log=lambda m: None)
    caption_region(before, after, tmp_path / "b.gpkg", lambda: on_this_machine(shuffled), options, log=lambda m: None)
    assert shuffled.answered != in_order.answered  # the second run really completed out of order
    assert stored(tmp_path / "a.gpkg") == stored(tmp_path / "b.gpkg")
    assert len(stored(tmp_path / "a.gpkg")) == TILES


def _wait_until(condition, process: subprocess.Popen, what: str) -> None:
    """Wait for a state the test controls (never for a time); the limit only stops a hung run from hanging the
    suite."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} never happened (exit {process.poll()})")


def _written(out: Path) -> int:
    try:
        return len(list(read_tiles(out))) if out.exists() else 0
    except Exception:  # noqa: BLE001 — the first transaction may not be there yet
        return 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_standin_run_stopped_with_batches_in_flight_resumes_every_tile_once(
    tmp_path: Path, request, stop: signal.Signals
) -> None:
    if not CCEXPERT.exists():
        pytest.skip(f"the ccexpert command is not installed next to {sys.executable}")
    # It answers two requests (4 tiles), then holds every later one: the run is stopped with requests in flight,
    # and cannot end before that, however busy the machine.
    standin = start_standin(request, "--batch-s", "0", "--max-batch", "4", "--hold-after-requests", "2")
    out = tmp_path / "out.gpkg"
    args = [str(CCEXPERT), "caption-region", *region_args(tmp_path, out, "--batch-size", "2", "--backend",
                                                          standin.url)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: _written(out) >= 4 and standin.stats()["held"] >= 2, process,
                    "4 tiles written with 2 requests held")
        os.kill(process.pid, stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "work finished so far is kept" in stderr
        assert "Traceback" not in stderr
    assert len(stored(out)) == 4  # the answered batches; those in flight were never written
    standin.release()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [t.tile_id for t in read_tiles(out)]
    assert len(ids) == len(set(ids)) == TILES
    assert all(status == CAPTIONED for _, _, status in stored(out))


def test_one_of_two_standin_backends_dying_mid_run_hands_its_batches_to_the_other(
    tmp_path: Path, request, capsys
) -> None:
    dying = start_standin(request, "--batch-s", "0.1", "--die-after-requests", "3")
    steady = start_standin(request, "--batch-s", "0.1")
    out = tmp_path / "out.gpkg"
    code = cli.main(["caption-region", *region_args(
        tmp_path, out, "--batch-size", "1", "--in-flight", "2", "--backend", dying.url, steady.url,
    )])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert dying.process.wait(timeout=10) != 0  # it really died
    assert "its batches go to the other backends" in captured.err
    assert f"{steady.url}: " in captured.out and f"{dying.url}: " in captured.out  # batches per backend
    ids = [t.tile_id for t in read_tiles(out)]
    assert len(ids) == len(set(ids)) == TILES
    assert stored(out) == sorted((i, caption_for(i)[0], CAPTIONED) for i in ids)


@pytest.mark.parametrize("compress", [True, False], ids=["png", "tiff"])
def test_the_backend_decodes_exactly_the_pixels_that_were_read(tmp_path: Path, compress: bool) -> None:
    from backend.limits import decode_image
    from ccexpert_core.client import encode_array
    from ccexpert_core.geo.grid import TileGrid
    from ccexpert_core.geo.raster import RasterSeries
    from ccexpert_core.protocol import Limits

    before, after = write_pair(tmp_path, size=384)
    with RasterSeries([before, after], log=lambda m: None) as pair:
        grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, 384)
        (tile,) = grid.tiles()
        pair.fit_stretch([tile], None)
        pixels = pair_pixels(pair, tile)
    for rgb in (pixels.before, pixels.after):
        decoded = decode_image(encode_array(rgb, compress), Limits(), 384, "before[0]")
        assert np.array_equal(np.asarray(decoded), rgb)


def test_reader_threads_borrow_rasters_of_their_own_and_all_are_closed_after_the_last_read() -> None:
    class Rasters:
        def __init__(self) -> None:
            self.closed = False

        def close(self) -> None:
            self.closed = True

    made: list[Rasters] = []
    copies = Copies(lambda: made.append(Rasters()) or made[-1])
    both_reading, second_done = threading.Barrier(2), threading.Event()
    seen: list[Rasters] = []
    open_while_lent: list[bool] = []

    def read(last: bool) -> None:
        with copies.borrowed() as rasters:
            seen.append(rasters)
            both_reading.wait()
            if last:
                second_done.wait()
                open_while_lent.append(not rasters.closed)
    first = threading.Thread(target=read, args=(False,))
    second = threading.Thread(target=read, args=(True,))
    first.start(), second.start()
    first.join()
    with copies.borrowed() as again:  # an idle copy is lent again, not a new one made
        assert again is seen[0] or again is seen[1]
    closing = threading.Thread(target=copies.close)
    closing.start()
    assert len(made) == 2 and seen[0] is not seen[1]
    second_done.set()  # the copy still lent comes back, and close() can close it
    closing.join()
    second.join()
    assert open_while_lent == [True] and all(rasters.closed for rasters in made)
