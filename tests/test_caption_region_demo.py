"""``make demo``'s script: synthetic georeferenced rasters, a region run, where the results are, a few captions."""

from __future__ import annotations

from pathlib import Path

import rasterio

from ccexpert_core import demo
from ccexpert_core.defaults import default_model, model_note
from ccexpert_core.geo.captions_layer import read_tiles
from ccexpert_core.geo.synthetic import DEMO_CRS, DEMO_SIZE

from geo_fixtures import FakeEngine


def test_demo_writes_rasters_once_and_a_fresh_region_run(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: FakeEngine())
    assert demo.main(tmp_path) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "captions.gpkg") in out and str(tmp_path / "report.html") in out
    assert "  r0_c0: " in out and model_note(default_model()) in out
    with rasterio.open(tmp_path / "before.tif") as before:
        assert before.crs.to_string() == DEMO_CRS and before.shape == (DEMO_SIZE, DEMO_SIZE)
    stamp = (tmp_path / "after.tif").stat().st_mtime_ns
    assert demo.main(tmp_path) == 0
    assert (tmp_path / "after.tif").stat().st_mtime_ns == stamp  # the rasters are reused
    assert "0 done before" in capsys.readouterr().out  # the GeoPackage is not
    assert len(list(read_tiles(tmp_path / "captions.gpkg"))) == (DEMO_SIZE // 384) ** 2

