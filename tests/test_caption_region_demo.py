"""``make demo``'s script: synthetic georeferenced rasters, a region run, where the results are, a few captions, and
the three-date town of the README's series example with the command that captions it."""

from __future__ import annotations

from pathlib import Path

import rasterio

from ccexpert_cli import demo
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
    for date in ("2016", "2018", "2021"):  # the README's series, dated as a camera would date them
        with rasterio.open(tmp_path / f"town_{date}.tif") as town:
            assert town.shape == (DEMO_SIZE, DEMO_SIZE) and town.tags()["TIFFTAG_DATETIME"].startswith(date)
    assert ("ccexpert caption-region --date 2016=town_2016.tif --date 2018=town_2018.tif --date 2021=town_2021.tif "
            "--out town.gpkg --report town.html") in out
    stamp = (tmp_path / "after.tif").stat().st_mtime_ns
    assert demo.main(tmp_path) == 0
    assert (tmp_path / "after.tif").stat().st_mtime_ns == stamp  # the rasters are reused
    assert "0 done before" in capsys.readouterr().out  # the GeoPackage is not
    assert len(list(read_tiles(tmp_path / "captions.gpkg"))) == (DEMO_SIZE // 384) ** 2

