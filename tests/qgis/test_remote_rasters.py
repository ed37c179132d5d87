"""The plugin reads rasters GDAL opens by URL as it reads files: a layer whose source is a COG over HTTP (a
``/vsicurl/`` path, as QGIS gives a raster added from a URL, or a plain URL) is read tile for tile into the same
pixels as the file on disk, a run over such sources records the files' names (never a signed URL's query string),
the review dock reads its tiles again by URL, and the output is refused as an input as before, GDAL's settings for remote reads stay on the reading thread (QGIS's
other layers keep theirs), and a URL that does not answer is one message without its credentials.

COGs are served by bench/range_server.py (standard library: it runs on QGIS's Python) on 127.0.0.1; the backend is
the stand-in (bench/standin_backend.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from range_files import RangeFiles, serve

from qgis_plugin.errors import CaptionRunError
from qgis_plugin.job import Job, RasterInput, run_job
from qgis_plugin.review_pixels import RunPixels
from qgis_plugin.review_store import CaptionsFile, read_options
from qgis_plugin.shared_modules import grid as tiling
from qgis_plugin.shared_modules import sources
from qgis_plugin.tile_reader import RasterSeriesReader

from conftest import Feedback
from rasters import write_pair
from standin import start_standin

SIZE, TILE = 256, 64
SECRET = "s3cr3t-signature"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The pair as COGs tiled at the run's tile size (GDAL's COG driver, as QGIS's GDAL has it)."""
    folder = tmp_path_factory.mktemp("cogs")
    plain = write_pair(tmp_path_factory.mktemp("plain"), SIZE)
    for path in plain:
        gdal.Translate(str(folder / path.name), str(path), format="COG", creationOptions=[f"BLOCKSIZE={TILE}"])
    return folder / "before.tif", folder / "after.tif"


@pytest.fixture()
def server(request: pytest.FixtureRequest, scene: tuple[Path, Path]) -> RangeFiles:
    return serve(request, scene[0].parent)


def tiles_read(sources_: list[str]) -> dict[str, list[np.ndarray]]:
    """Every tile of both dates as the plugin's reader gives it, by tile id."""
    with RasterSeriesReader(sources_, ["BEFORE", "AFTER"]) as pair:
        grid = tiling.TileGrid(pair.grid.width, pair.grid.height, pair.grid.transform, TILE, 0)
        tiles = grid.tiles()
        pair.fit_stretch(tiles, None)
        return {tile.tile_id: [array for read in pair.read_dates(tile) for array in read] for tile in tiles}


def test_a_cog_url_is_read_into_the_same_pixels_as_the_file(scene, server: RangeFiles) -> None:
    local = tiles_read([str(path) for path in scene])
    remote = tiles_read([f"/vsicurl/{server.url}/before.tif?sig={SECRET}", f"{server.url}/after.tif"])
    assert local.keys() == remote.keys() and len(local) == (SIZE // TILE) ** 2
    for tile_id, arrays in local.items():
        for mine, theirs in zip(arrays, remote[tile_id]):
            np.testing.assert_array_equal(mine, theirs, err_msg=tile_id)
    assert server.requests("before.tif") > 0 and server.requests("after.tif") > 0
    # The remote settings were this thread's for the moment it read: QGIS's own (global) settings are untouched.
    assert gdal.GetConfigOption(sources.READDIR_OPTION) is None
    assert gdal.GetConfigOption("GDAL_HTTP_MAX_RETRY") is None


def test_a_run_over_urls_records_the_files_names_and_never_the_query_string(
    scene, server: RangeFiles, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    standin = start_standin(request, "--batch-s", "0", "--max-batch", "16", python=sys.executable)
    rasters = tuple(RasterInput.from_source(f"/vsicurl/{server.url}/{path.name}?sig={SECRET}") for path in scene)
    assert [raster.name for raster in rasters] == ["before.tif", "after.tif"]
    output = tmp_path / "out.gpkg"
    summary = run_job(Job(rasters=rasters, output=str(output), backend_urls=(standin.url,), tile_size=TILE), Feedback())
    assert summary.error is None and summary.counts["captioned"] == (SIZE // TILE) ** 2
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR)
    names = {(f["before_source"], f["after_source"]) for f in dataset.GetLayerByName("captions")}
    assert names == {("before.tif", "after.tif")}
    dataset = None
    assert SECRET.encode() not in output.read_bytes()
    # The review dock reads the layer's tiles again by the same URLs, into the pixels of the files on disk.
    local = tiles_read([str(path) for path in scene])
    pixels = RunPixels(read_options(CaptionsFile(str(output), "captions")), rasters[0], "BEFORE", set(local),
                       (-1e9, -1e9, 1e9, 1e9))
    try:
        for tile in pixels.tiles.tiles():
            np.testing.assert_array_equal(pixels.read(rasters[0], "BEFORE", tile), local[tile.tile_id][0])
            np.testing.assert_array_equal(pixels.read(rasters[1], "AFTER", tile), local[tile.tile_id][2])
    finally:
        pixels.close()
    # A run over URLs still refuses to write over its local input.
    local = RasterInput.from_source(str(scene[0]))
    refused = run_job(Job(rasters=(local, rasters[1]), output=str(scene[0]), backend_urls=(standin.url,),
                          tile_size=TILE), Feedback())
    assert refused.error and "is the same file as the BEFORE raster" in refused.error


def test_a_url_that_does_not_answer_is_one_message_without_its_credentials(server: RangeFiles) -> None:
    with pytest.raises(CaptionRunError) as refused:
        RasterSeriesReader([f"{server.url}/before.tif", f"/vsicurl/{server.url}/missing.tif?sig={SECRET}"],
                           ["BEFORE", "AFTER"])
    message = str(refused.value)
    assert message.startswith(f"AFTER raster {server.url}/missing.tif cannot be read: ") and "404" in message
    assert SECRET not in message and "\n" not in message
