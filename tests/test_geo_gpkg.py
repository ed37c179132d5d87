"""The GeoPackage output: GDAL/OGR reads it with the right CRS and features; tiles are unique; reruns are checked."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from rasterio.crs import CRS

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, LAYER, CaptionsLayer, TileRecord, read_tiles
from ccexpert_core.geo.gpkg import GeoPackage
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import spatial_ref

pyogrio = pytest.importorskip("pyogrio", reason="pyogrio (GDAL/OGR for Python) is needed to read the GeoPackage")

GT = (431000.0, 0.5, 0.0, 4829000.0, 0.0, -0.5)
OPTIONS = {"tile_size": "64", "model_id": "m"}


def records(grid: TileGrid, status: str = CAPTIONED, caption: str = "a road has been built") -> list[TileRecord]:
    result = CaptionResult.from_caption(caption, 0.7) if status == CAPTIONED else None
    return [TileRecord(t, grid.footprint(t), status, result, (b"png1", b"png2")) for t in grid.tiles()]


def open_layer(path: Path, crs: str = "EPSG:32631", options: dict[str, str] = OPTIONS) -> CaptionsLayer:
    return CaptionsLayer(path, spatial_ref(CRS.from_user_input(crs)), options, "before.tif", "after.tif", "m")


def test_gdal_reads_the_layer_with_its_crs_fields_and_features(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(256, 128, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid)[:5])
        layer.write(records(grid)[5:])
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["crs"] == "EPSG:32631" and info["features"] == 8 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == [
        "tile_id", "row", "col", "caption", "change_detected", "confidence", "status", "before_source",
        "after_source", "model_id", "created_at",
    ]
    assert info["total_bounds"] == pytest.approx((431000.0, 4828936.0, 431128.0, 4829000.0))
    meta, _, geometries, fields = pyogrio.raw.read(out, layer=LAYER)
    columns = dict(zip(meta["fields"], fields))
    assert columns["tile_id"][0] == "r0_c0" and columns["caption"][0] == "a road has been built"
    assert bool(columns["change_detected"][0]) and columns["status"][0] == CAPTIONED
    assert len(geometries) == 8
    stored = list(read_tiles(out))
    assert stored[0].bounds == pytest.approx(grid.bounds(grid.tiles()[0])) and stored[0].before_png == b"png1"


def test_a_crs_without_epsg_code_gets_its_own_srs(tmp_path: Path) -> None:
    out = tmp_path / "custom.gpkg"
    custom = "+proj=laea +lat_0=47 +lon_0=7.5 +x_0=1000 +y_0=2000 +ellps=GRS80 +units=m +no_defs"
    with open_layer(out, custom) as layer:
        layer.write(records(TileGrid(64, 64, GT, 64)))
        assert layer.srs_id >= 100000
    assert CRS.from_user_input(pyogrio.read_info(out, layer=LAYER)["crs"]) == CRS.from_user_input(custom)


def test_tiles_are_replaced_not_duplicated_and_finished_ones_are_known(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
        assert layer.finished_ids() == set()
    with open_layer(out) as layer:
        layer.write(records(grid))
        assert layer.finished_ids() == {"r0_c0", "r0_c1"}
    assert pyogrio.read_info(out, layer=LAYER)["features"] == 2
    package = GeoPackage(out)  # a plain sqlite3 connection lacks the functions of the spatial index's triggers
    with pytest.raises(sqlite3.IntegrityError):
        package.connection.execute(f"INSERT INTO {LAYER} (tile_id, row, col, status) VALUES ('r0_c0', 0, 0, 'x')")
    package.close()


def test_other_options_are_refused_and_the_file_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    with open_layer(out) as layer:
        layer.write(records(TileGrid(128, 64, GT, 64)))
    with pytest.raises(CCExpertError, match="tile_size: 64 there, 128 now"):
        open_layer(out, options={"tile_size": "128", "model_id": "m"})
    assert pyogrio.read_info(out, layer=LAYER)["features"] == 2


def test_outputs_that_cannot_be_written(tmp_path: Path) -> None:
    text = tmp_path / "notes.gpkg"
    text.write_text("not a database, just some text that is long enough to fill a sqlite header " * 3)
    with pytest.raises(CCExpertError, match="notes.gpkg"):
        open_layer(text)
    assert text.read_text().startswith("not a database")
    with pytest.raises(CCExpertError, match="cannot write"):
        open_layer(tmp_path / "missing-folder" / "out.gpkg")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(CCExpertError, match="not a GeoPackage"):
        open_layer(other)


SYSTEM_PYTHON = Path("/usr/bin/python3")
GPKG_VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
QGIS_OPEN = """
import sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
for name in ("captions", "changes"):
    layer = QgsVectorLayer(f"{sys.argv[1]}|layername={name}", name, "ogr")
    print(name, layer.isValid(), layer.featureCount(), layer.crs().authid())
app.exitQgis()
"""


def layer_with_changes(path: Path) -> Path:
    grid = TileGrid(128, 64, GT, 64)
    square = [[(431001.0, 4828999.0), (431010.0, 4828999.0), (431010.0, 4828990.0), (431001.0, 4828999.0)]]
    with open_layer(path) as layer:
        layer.write([TileRecord(t, grid.footprint(t), CAPTIONED, None, None, [square]) for t in grid.tiles()])
    return path


def test_gdal_validator_accepts_the_geopackage(tmp_path: Path) -> None:
    if not GPKG_VALIDATOR.exists():
        pytest.skip(f"GDAL's GeoPackage validator is not installed ({GPKG_VALIDATOR}, Debian's python3-gdal)")
    out = layer_with_changes(tmp_path / "captions.gpkg")
    result = subprocess.run([str(SYSTEM_PYTHON), str(GPKG_VALIDATOR), str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_qgis_opens_both_layers(tmp_path: Path) -> None:
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("QGIS's Python (python3-qgis) is not installed")
    out = layer_with_changes(tmp_path / "captions.gpkg")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime), "GDAL_PAM_ENABLED": "NO"}
    result = subprocess.run([str(SYSTEM_PYTHON), "-c", QGIS_OPEN, str(out)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.splitlines() == ["captions True 2 EPSG:32631", "changes True 2 EPSG:32631"], result.stderr


def test_the_layer_has_a_spatial_index_gdal_uses_and_it_follows_replaced_tiles(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(256, 128, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
    with open_layer(out) as layer:
        layer.write(records(grid)[:3])  # three tiles replaced in place (an upsert: the update triggers)
    sql = f"SELECT HasSpatialIndex('{LAYER}', 'geom') AS indexed"
    assert pyogrio.raw.read(out, sql=sql)[3][0][0] == 1
    _, _, geometries, _ = pyogrio.raw.read(out, layer=LAYER, bbox=(431000.0, 4828990.0, 431010.0, 4829000.0))
    assert len(geometries) == 1  # the R-tree answers the window query: tile r0_c0 only
    with sqlite3.connect(out) as connection:
        index = connection.execute(f"SELECT id, minx, maxx, miny, maxy FROM rtree_{LAYER}_geom ORDER BY id").fetchall()
        tiles = connection.execute(f"SELECT fid, row, col FROM {LAYER} ORDER BY fid").fetchall()
    assert [entry[0] for entry in index] == [fid for fid, _, _ in tiles]
    for (_, min_x, max_x, min_y, max_y), (_, row, col) in zip(index, tiles):
        assert (min_x, min_y, max_x, max_y) == pytest.approx(grid.bounds(grid.tiles()[row * 4 + col]), abs=0.01)


def test_a_file_written_without_a_spatial_index_gets_one_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    grid = TileGrid(128, 64, GT, 64)
    with open_layer(out) as layer:
        layer.write(records(grid, FAILED))
    with sqlite3.connect(out) as connection:  # as files written before the index existed
        for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            connection.execute(f'DROP TRIGGER "{name}"')
        connection.execute(f"DROP TABLE rtree_{LAYER}_geom")
        connection.execute("DELETE FROM gpkg_extensions")
    with open_layer(out) as layer:
        layer.write(records(grid)[:1])
    assert pyogrio.raw.read(out, sql=f"SELECT HasSpatialIndex('{LAYER}', 'geom')")[3][0][0] == 1
    with sqlite3.connect(out) as connection:
        assert connection.execute(f"SELECT count(*) FROM rtree_{LAYER}_geom").fetchone()[0] == 2
