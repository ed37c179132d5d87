"""The region pipeline: tiles → engine → GeoPackage, with nodata, areas, resuming, failures and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.captions_layer import CAPTIONED, CHANGES_LAYER, FAILED, LAYER, SKIPPED_NODATA, read_tiles
from ccexpert_core.geo.engine import InProcessEngine
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import RasterSeries
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.geo.synthetic import write_geotiff

from geo_fixtures import CRS, ORIGIN, FakeEngine, utm_transform, write_pair

pyogrio = pytest.importorskip("pyogrio", reason="pyogrio (GDAL/OGR for Python) is needed to read the GeoPackage")

OPTIONS = RegionOptions(tile_size=64, overlap="16", batch_size=4)


def run(before: Path, after: Path, out: Path, engine: FakeEngine, options: RegionOptions = OPTIONS, **kwargs):
    return caption_region(before, after, out, lambda: on_this_machine(engine), options, log=lambda m: None, **kwargs)


def statuses(out: Path) -> dict[str, str]:
    return {t.tile_id: t.status for t in read_tiles(out)}


@pytest.fixture(scope="module")
def tiny_engine() -> InProcessEngine:
    """The random tiny model in memory, answering with few tokens to keep the tests quick."""
    from ccexpert_core.inference.captioner import Captioner

    captioner = Captioner.load("preset:tiny", device="cpu")
    captioner.max_new_tokens = 6
    return InProcessEngine(captioner)


def test_region_is_captioned_into_a_geopackage_and_a_report(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=160)
    out, report = tmp_path / "captions.gpkg", tmp_path / "report.html"
    engine = FakeEngine()
    summary = run(before, after, out, engine, RegionOptions(tile_size=64, overlap="25%", batch_size=3, report=report))
    expected = [t.tile_id for t in TileGrid(160, 160, utm_transform().to_gdal(), 64, 16).tiles()]
    assert summary.tiles == len(expected) == 9 and summary.counts[CAPTIONED] == 9
    assert sorted(engine.captioned_ids) == sorted(expected)
    assert all(len(call) <= 3 for call in engine.calls)
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["crs"] == CRS and info["features"] == 9
    page = report.read_text()
    assert page.count('src="data:image/') == 1 + 2 * 9  # the overview and two thumbnails per tile
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "<style>" in page  # in-page links only
    assert "fake-engine" in page and "r2_c2" in page


def test_engine_gets_the_tiles_pixels(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=128)
    engine = FakeEngine()
    run(before, after, tmp_path / "out.gpkg", engine, RegionOptions(tile_size=64, batch_size=8))
    with rasterio.open(before) as dataset:
        expected = dataset.read(window=((64, 128), (0, 64))).transpose(1, 2, 0)
    index = engine.captioned_ids.index("r1_c0")
    assert np.array_equal(engine.pairs[index][0], expected)


def test_nodata_tiles_are_skipped_and_recorded(tmp_path: Path) -> None:
    data = np.full((3, 128, 192), 100, np.uint8)
    data[:, :, :80] = 0  # the western 80 columns are nodata: tile column 0 fully, column 1 by 16/64 = 25 %
    before = write_geotiff(tmp_path / "b.tif", data, CRS, utm_transform(), nodata=0)
    after = write_geotiff(tmp_path / "a.tif", np.full((3, 128, 192), 150, np.uint8), CRS, utm_transform())
    out = tmp_path / "out.gpkg"
    engine = FakeEngine()
    summary = run(before, after, out, engine, RegionOptions(tile_size=64))
    assert summary.counts[SKIPPED_NODATA] == 2 and summary.counts[CAPTIONED] == 4
    found = statuses(out)
    assert found["r0_c0"] == found["r1_c0"] == SKIPPED_NODATA and found["r0_c1"] == CAPTIONED
    assert not {"r0_c0", "r1_c0"} & set(engine.captioned_ids)
    # A rerun does not try skipped tiles again.
    again = FakeEngine()
    assert run(before, after, out, again, RegionOptions(tile_size=64)).already_done == 6 and again.calls == []


def test_polygon_area_from_geojson(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=192)
    x0, y0 = ORIGIN
    # An L-shaped area over tiles (0,0), (1,0), (1,1) of a 3×3 grid of 64 m tiles, in the rasters' CRS.
    ring = [[x0 + 5, y0 - 5], [x0 + 60, y0 - 5], [x0 + 60, y0 - 70], [x0 + 120, y0 - 70], [x0 + 120, y0 - 120],
            [x0 + 5, y0 - 120], [x0 + 5, y0 - 5]]
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }))
    out = tmp_path / "out.gpkg"
    run(before, after, out, FakeEngine(), RegionOptions(tile_size=64, area_file=area))
    assert set(statuses(out)) == {"r0_c0", "r1_c0", "r1_c1"}
    # The same square in longitude/latitude (GeoJSON's default CRS) selects the same tiles.
    with RasterSeries([before, after], log=lambda m: None) as pair:
        from rasterio.warp import transform_geom

        lonlat = transform_geom(pair.grid.crs, "OGC:CRS84", {"type": "Polygon", "coordinates": [ring]})
    area.write_text(json.dumps(lonlat))
    out2 = tmp_path / "out2.gpkg"
    run(before, after, out2, FakeEngine(), RegionOptions(tile_size=64, area_file=area))
    assert set(statuses(out2)) == {"r0_c0", "r1_c0", "r1_c1"}


def test_interrupted_run_resumes_without_duplicates(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=160)
    out = tmp_path / "out.gpkg"
    first = FakeEngine()
    summary = run(before, after, out, first, max_batches=1)
    assert summary.stopped_early and summary.counts[CAPTIONED] == 4 and len(statuses(out)) == 4
    second = FakeEngine()
    summary = run(before, after, out, second)
    assert summary.already_done == 4 and summary.counts[CAPTIONED] == 5
    assert not set(first.captioned_ids) & set(second.captioned_ids)
    ids = [t.tile_id for t in read_tiles(out)]
    assert len(ids) == len(set(ids)) == 9 and pyogrio.read_info(out, layer=LAYER)["features"] == 9


def test_failed_batch_is_recorded_then_retried(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=160)
    out = tmp_path / "out.gpkg"
    flaky = FakeEngine(fail_on_calls=(2,))
    summary = run(before, after, out, flaky)
    assert summary.counts == {CAPTIONED: 5, SKIPPED_NODATA: 0, FAILED: 4}
    failed = {tile for tile, status in statuses(out).items() if status == FAILED}
    assert failed == set(flaky.calls[1])
    retry = FakeEngine()
    run(before, after, out, retry)
    assert set(retry.captioned_ids) == failed and set(statuses(out).values()) == {CAPTIONED}


def test_an_engine_that_keeps_failing_stops_the_run(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=192)
    out = tmp_path / "out.gpkg"
    broken = FakeEngine(fail_on_calls=range(1, 100), error=ConnectionError("backend unreachable"))
    with pytest.raises(CCExpertError, match="3 batches in a row failed.*backend unreachable"):
        run(before, after, out, broken, RegionOptions(tile_size=64, batch_size=2))
    assert len(broken.calls) == 3 and list(statuses(out).values()) == [FAILED] * 6


def test_a_reader_error_reaches_the_caller_and_keeps_written_batches(tmp_path: Path, monkeypatch) -> None:
    before, after = write_pair(tmp_path, size=160)
    out = tmp_path / "out.gpkg"
    original = RasterSeries.read_tiles

    def read_tiles(dates: RasterSeries, tiles):
        if any(tile.row == 2 for tile in tiles):
            raise MemoryError("out of memory while reading")
        return original(dates, tiles)

    monkeypatch.setattr(RasterSeries, "read_tiles", read_tiles)
    with pytest.raises(MemoryError):
        run(before, after, out, FakeEngine())
    assert len(statuses(out)) == 4  # the first batch (row 0 and part of row 1) was written


def test_resolution_changes_the_grid_and_the_ids(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=128)
    out = tmp_path / "out.gpkg"
    summary = run(before, after, out, FakeEngine(), RegionOptions(tile_size=64, resolution=2.0))
    assert summary.tiles == 1
    assert pyogrio.read_info(out, layer=LAYER)["total_bounds"] == pytest.approx(
        (ORIGIN[0], ORIGIN[1] - 128, ORIGIN[0] + 128, ORIGIN[1])
    )


def test_change_maps_become_the_changes_layer(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=128)
    out = tmp_path / "out.gpkg"
    # The top-left quarter of every tile changed.
    engine = FakeEngine(change_map=((0.9, 0.0), (0.0, 0.0)))
    run(before, after, out, engine, RegionOptions(tile_size=64, batch_size=2), max_batches=1)
    run(before, after, out, engine, RegionOptions(tile_size=64, batch_size=2))
    info = pyogrio.read_info(out, layer=CHANGES_LAYER)
    assert info["features"] == 4 and info["geometry_type"] == "MultiPolygon" and info["crs"] == CRS
    _, _, geometries, fields = pyogrio.raw.read(out, layer=CHANGES_LAYER)
    assert sorted(fields[0]) == ["r0_c0", "r0_c1", "r1_c0", "r1_c1"]
    assert info["total_bounds"] == pytest.approx((ORIGIN[0], ORIGIN[1] - 96, ORIGIN[0] + 96, ORIGIN[1]))
    without = tmp_path / "without.gpkg"
    run(before, after, without, FakeEngine(), RegionOptions(tile_size=64))
    assert CHANGES_LAYER not in pyogrio.list_layers(without)[:, 0]


def test_levircc_pair_as_geotiffs_gives_one_captioned_feature(
    tmp_path: Path, levircc_pair: tuple[Path, Path], tiny_engine: InProcessEngine
) -> None:
    from PIL import Image

    paths = []
    for name, png in zip(("before", "after"), levircc_pair):
        rgb = np.asarray(Image.open(png).convert("RGB"))
        paths.append(write_geotiff(tmp_path / f"{name}.tif", rgb, CRS, utm_transform(0.5)))
    out = tmp_path / "levir.gpkg"
    summary = caption_region(*paths, out, lambda: on_this_machine(tiny_engine), RegionOptions(), log=lambda m: None)
    assert summary.tiles == 1 and summary.counts[CAPTIONED] == 1
    (tile,) = read_tiles(out)
    assert tile.status == CAPTIONED and isinstance(tile.caption, str) and 0 <= tile.confidence <= 1
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["features"] == 1 and info["total_bounds"] == pytest.approx(
        (ORIGIN[0], ORIGIN[1] - 128, ORIGIN[0] + 128, ORIGIN[1])
    )


def test_an_output_written_under_the_models_former_id_resumes(tmp_path: Path) -> None:
    before, after = write_pair(tmp_path, size=96)
    out = tmp_path / "out.gpkg"
    old = FakeEngine()
    old.model_id = "/models/ccexpert"  # older versions stored the model's path
    run(before, after, out, old, RegionOptions(tile_size=48, batch_size=1), max_batches=1)
    new = FakeEngine()
    new.model_id, new.former_ids = "ccexpert@1234abcd", ("/models/ccexpert",)
    summary = run(before, after, out, new, RegionOptions(tile_size=48, batch_size=1))
    assert (summary.already_done, summary.counts[CAPTIONED]) == (1, 3)
    stranger = FakeEngine()
    stranger.model_id = "other@00000000"
    with pytest.raises(CCExpertError, match="model_id: /models/ccexpert there, other@00000000 now"):
        run(before, after, out, stranger, RegionOptions(tile_size=48, batch_size=1))
