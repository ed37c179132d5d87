"""The command and the plugin run one contract: each resumes and exports the other's output, here with rasters
whose CRS has no EPSG code (stored as its WKT, which each tool writes in its own library's words, and compared by
what it is), and a series captioned first to last by one tool is resumed by the other interval by interval."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from qgis_plugin.errors import CaptionRunError
from qgis_plugin.job import Job, RasterInput, plan_job, run_job

from conftest import CCEXPERT, Feedback
from rasters import scene_pair, write_geotiff
from standin import start_standin

TILE = 64
#: A Lambert conformal conic of made-up parameters: no EPSG code names it.
CUSTOM = "+proj=lcc +lat_1=44.1 +lat_2=46.7 +lat_0=45.3 +lon_0=3.3 +x_0=600000 +y_0=6200000 +ellps=GRS80 +units=m"


def custom_crs_geotiff(path: Path, data: np.ndarray) -> Path:
    count, height, width = data.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, gdal.GDT_Byte)
    dataset.SetGeoTransform((600000.0, 1.0, 0.0, 6200000.0, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromProj4(CUSTOM)
    dataset.SetProjection(srs.ExportToWkt())
    for index in range(count):
        dataset.GetRasterBand(index + 1).WriteArray(data[index])
    dataset = None
    return path


@pytest.fixture(scope="module")
def custom_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("custom-crs")
    before, after = scene_pair(128)
    return custom_crs_geotiff(folder / "before.tif", before), custom_crs_geotiff(folder / "after.tif", after)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("series")
    first, second = scene_pair(128, seed=1)
    _, third = scene_pair(128, seed=2)
    return [write_geotiff(folder / f"town_{year}.tif", data) for year, data in zip((2016, 2018, 2021),
                                                                                      (first, second, third))]


def command(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(CCEXPERT), *map(str, args)], capture_output=True, text=True, check=False)


def stored_crs(output: Path) -> str:
    with sqlite3.connect(output) as connection:
        return connection.execute("SELECT value FROM ccexpert_run_options WHERE key = 'crs'").fetchone()[0]


def forget(output: Path, where: str) -> None:
    """Take features out, as a run killed before their batch would have left the file."""
    with sqlite3.connect(output) as connection:
        connection.execute(f"DELETE FROM captions WHERE {where}")


def export(output: Path, scene: tuple[Path, Path], folder: Path) -> subprocess.CompletedProcess:
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR | gdal.OF_UPDATE)  # GDAL's R-tree triggers need its SQL
    dataset.ExecuteSQL("UPDATE captions SET review_status = 'accepted' WHERE status = 'captioned'")
    dataset = None
    return command("export-dataset", "--captions", output, "--before", scene[0], "--after", scene[1],
                   "--out", folder)


def plugin_job(rasters: list[Path], output: Path, url: str, **settings: object) -> Job:
    return Job(rasters=tuple(RasterInput.from_source(str(path)) for path in rasters), output=str(output),
               backend_urls=(url,), tile_size=TILE, **settings)


def test_the_plugin_resumes_and_the_command_exports_a_custom_crs_output(
    qgis_app, custom_scene: tuple[Path, Path], tmp_path: Path, request
) -> None:
    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    output = tmp_path / "command.gpkg"
    done = command("caption-region", "--before", custom_scene[0], "--after", custom_scene[1], "--out", output,
                   "--tile-size", TILE, "--backend", standin.url)
    assert done.returncode == 0, done.stderr
    assert not stored_crs(output).startswith("EPSG:")  # its WKT, in rasterio's words
    forget(output, "tile_id = 'r1_c1'")
    summary = run_job(plugin_job(list(custom_scene), output, standin.url), Feedback())
    assert summary.error is None, summary.error
    assert (summary.already_done, summary.written) == (3, 1)
    done = export(output, custom_scene, tmp_path / "dataset")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_the_command_resumes_and_exports_the_plugins_custom_crs_output(
    qgis_app, custom_scene: tuple[Path, Path], tmp_path: Path, request
) -> None:
    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    output = tmp_path / "plugin.gpkg"
    summary = run_job(plugin_job(list(custom_scene), output, standin.url), Feedback())
    assert summary.error is None and summary.counts["captioned"] == 4, summary
    assert not stored_crs(output).startswith("EPSG:")  # its WKT, in GDAL's words
    forget(output, "tile_id = 'r0_c0'")
    done = command("caption-region", "--before", custom_scene[0], "--after", custom_scene[1], "--out", output,
                   "--tile-size", TILE, "--backend", standin.url)
    assert done.returncode == 0, done.stderr
    assert "3 already in" in done.stderr and "1 to do" in done.stderr
    done = export(output, custom_scene, tmp_path / "dataset")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_a_first_to_last_series_is_resumed_by_the_other_tool_interval_by_interval(
    qgis_app, series: list[Path], tmp_path: Path, request
) -> None:
    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    dated = [argument for year, path in zip((2016, 2018, 2021), series) for argument in ("--date", f"{year}={path}")]
    by_command, by_plugin = tmp_path / "command.gpkg", tmp_path / "plugin.gpkg"
    done = command("caption-region", *dated, "--first-to-last", "--out", by_command, "--tile-size", TILE,
                   "--backend", standin.url)
    assert done.returncode == 0, done.stderr
    job = plugin_job(series, by_plugin, standin.url, dates=("2016", "2018", "2021"), first_to_last=True)
    assert run_job(job, Feedback()).error is None

    def features(output: Path) -> list[tuple]:
        with sqlite3.connect(output) as connection:
            options = dict(connection.execute("SELECT key, value FROM ccexpert_run_options"))
            rows = connection.execute(
                'SELECT tile_id, "interval", caption, date_before, date_after, before_source, after_source, status '
                'FROM captions ORDER BY tile_id, "interval"').fetchall()
        del options["model_id"]  # the stand-in's, the same for both
        return [options, rows]

    assert features(by_plugin) == features(by_command)  # the same options, intervals and fields
    assert features(by_plugin)[0]["intervals"] == "0-1,1-2,0-2"
    forget(by_command, '"interval" = 2')  # the first-to-last interval, everywhere
    resumed = run_job(plugin_job(series, by_command, standin.url, dates=("2016", "2018", "2021"),
                                 first_to_last=True), Feedback())
    assert resumed.error is None and resumed.written == 4 and resumed.already_done == 0
    assert features(by_command) == features(by_plugin)


def test_both_tools_refuse_an_area_over_the_tile_limit_before_reading_a_tile(
    qgis_app, custom_scene: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "limited.gpkg"
    with pytest.raises(CaptionRunError, match=r"needs up to 4 tiles of 64 px, over the tile limit \(3\)"):
        plan_job(plugin_job(list(custom_scene), output, "http://127.0.0.1:9", max_tiles=3))
    done = command("caption-region", "--before", custom_scene[0], "--after", custom_scene[1], "--out", output,
                   "--tile-size", TILE, "--max-tiles", 3, "--backend", "http://127.0.0.1:9")
    assert done.returncode == 2 and "needs up to 4 tiles of 64 px, over --max-tiles (3)" in done.stderr
    assert not output.exists()


def test_processing_captions_first_to_last(
    qgis_iface, qgis_processing, series: list[Path], tmp_path: Path, request
) -> None:
    import processing

    from qgis_plugin import classFactory

    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    output = tmp_path / "processing.gpkg"
    try:
        processing.run("ccexpert:captionchanges", {
            "LAYERS": [str(path) for path in series], "DATES": "2016, 2018, 2021", "FIRST_TO_LAST": True,
            "TILE_SIZE": TILE, "BACKEND_URL": standin.url, "OUTPUT": str(output),
        })
    finally:
        plugin.unload()
    with sqlite3.connect(output) as connection:
        stored = dict(connection.execute("SELECT key, value FROM ccexpert_run_options"))
        intervals = [row[0] for row in connection.execute('SELECT DISTINCT "interval" FROM captions ORDER BY 1')]
    assert stored["intervals"] == "0-1,1-2,0-2" and intervals == [0, 1, 2]
