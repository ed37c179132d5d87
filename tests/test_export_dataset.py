"""ccexpert export-dataset: reviewed tiles become a CC JSON dataset whose chips are exactly the pixels the run
captioned (8-bit, stretched 16-bit, a fixed range, a resampled grid, a series of dates), dataset-info accepts it,
and bad input (no captions layer, rasters of another run, nothing reviewed) is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ccexpert_cli as cli
from ccexpert_core.data import read_cc_json
from ccexpert_core.geo import schema
from ccexpert_core.geo.dates import DateLabel
from ccexpert_core.geo.gpkg import GeoPackage
from ccexpert_core.geo.region import (
    DateInput,
    RegionOptions,
    caption_dates,
    caption_region,
)
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.geo.synthetic import synthetic_pair, write_demo_series, write_geotiff

from geo_fixtures import CRS, FakeEngine, utm_transform, write_pair

CORRECTION = "two buildings have been built at the top left"


def quiet(message: str) -> None:
    pass


def captioned_pixels(engine: FakeEngine) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """What the engine was given, by (tile_id, interval): a tile's intervals come in order within its batch."""
    seen: Counter = Counter()
    pixels = {}
    for tile_id, pair in zip(engine.captioned_ids, engine.pairs):
        pixels[tile_id, seen[tile_id]] = pair
        seen[tile_id] += 1
    return pixels


def review(gpkg: Path, decisions: dict[tuple[str, int], str | None]) -> None:
    """Set the review fields as the review panel does: a caption → corrected, None → accepted (through a
    connection with the spatial functions the layer's R-tree triggers call, as GDAL's and QGIS's have)."""
    package = GeoPackage(gpkg)
    with package.connection as connection:
        for (tile_id, interval), caption in decisions.items():
            status = schema.ACCEPTED if caption is None else schema.CORRECTED
            connection.execute(
                'UPDATE captions SET review_status = ?, reviewed_caption = ?, reviewed_at = CURRENT_TIMESTAMP '
                'WHERE tile_id = ? AND "interval" = ?', (status, caption, tile_id, interval),
            )
    package.close()


def chips(out: Path) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, dict]]:
    records = json.loads((out / "pairs.json").read_text())
    return {
        (r["tile_id"], r["interval"]): (
            np.asarray(Image.open(out / r["img1_path"])), np.asarray(Image.open(out / r["img2_path"])), r,
        )
        for r in records
    }


def run_pair(folder: Path, before: Path, after: Path, **options) -> tuple[Path, FakeEngine]:
    engine = FakeEngine()
    out = folder / "captions.gpkg"
    caption_region(before, after, out, lambda: on_this_machine(engine), RegionOptions(tile_size=64, **options), log=quiet)
    return out, engine


def export(*args: str) -> int:
    return cli.main(["export-dataset", *map(str, args)])


def test_reviewed_tiles_export_the_pixels_that_were_captioned(tmp_path: Path, capsys) -> None:
    before, after = write_pair(tmp_path)
    gpkg, engine = run_pair(tmp_path, before, after)
    seen = captioned_pixels(engine)
    review(gpkg, {("r0_c0", 0): CORRECTION, ("r1_c2", 0): None, ("r2_c1", 0): "there is no difference"})
    out = tmp_path / "dataset"
    assert export("--captions", gpkg, "--before", before, "--after", after, "--out", out) == 0
    said = capsys.readouterr().out
    assert "exported 3 tiles (2 corrected, 1 accepted)" in said and "left out: 6 not reviewed" in said
    exported = chips(out)
    assert set(exported) == {("r0_c0", 0), ("r1_c2", 0), ("r2_c1", 0)}
    with sqlite3.connect(gpkg) as connection:
        model_captions = {(t, k): c for t, k, c in connection.execute('SELECT tile_id, "interval", caption FROM captions')}
    for key, (first, second, record) in exported.items():
        np.testing.assert_array_equal(first, seen[key][0])
        np.testing.assert_array_equal(second, seen[key][1])
        assert record["model_caption"] == model_captions[key]
    assert exported["r0_c0", 0][2]["change_caption"] == [CORRECTION] and exported["r0_c0", 0][2]["change_flag"] == 1
    assert exported["r1_c2", 0][2]["change_caption"] == [model_captions["r1_c2", 0]]
    assert exported["r2_c1", 0][2]["change_flag"] == 0  # the analyst's "no change" decision
    assert cli.main(["dataset-info", str(out / "pairs.json"), "--check-images"]) == 0
    info = json.loads(capsys.readouterr().out)
    unchanged = sum(not record["change_flag"] for _, _, record in exported.values())
    assert info["total"]["pairs"] == 3 and info["total"]["no_change_pairs"] == unchanged
    summary = json.loads((out / "export.json").read_text())
    assert summary["counts"] == {"corrected": 2, "accepted": 1, "unreviewed": 0}
    assert summary["rasters"] == ["before.tif", "after.tif"] and summary["model_ids"] == "fake-engine"

    everything = tmp_path / "everything"
    assert export("--captions", gpkg, "--before", before, "--after", after, "--out", everything,
                  "--include-unreviewed") == 0
    assert len(read_cc_json(everything / "pairs.json")) == 9
    assert json.loads((everything / "export.json").read_text())["counts"]["unreviewed"] == 6


@pytest.mark.parametrize("case", ["stretch", "range", "resolution", "report"])
def test_the_run_s_mapping_and_grid_are_rebuilt_from_the_layer(tmp_path: Path, case: str, capsys) -> None:
    first, second = synthetic_pair(160, seed=3)
    # 16-bit data: the run maps it to 8 bits (its 2-98 % stretch, or the given range).
    before = write_geotiff(tmp_path / "before.tif", first.astype(np.uint16) * 37 + 900, CRS, utm_transform())
    after = write_geotiff(tmp_path / "after.tif", second.astype(np.uint16) * 37 + 900, CRS, utm_transform())
    options = {"stretch": {}, "range": {"value_range": (1000.0, 9000.0)}, "resolution": {"resolution": 1.5},
               "report": {"report": tmp_path / "report.html"}}[case]
    gpkg, engine = run_pair(tmp_path, before, after, **options)
    seen = captioned_pixels(engine)
    review(gpkg, {key: None for key in seen})
    out = tmp_path / "dataset"
    assert export("--captions", gpkg, "--before", before, "--after", after, "--out", out) == 0
    exported = chips(out)
    assert set(exported) == set(seen)
    for key, (first_chip, second_chip, _) in exported.items():
        np.testing.assert_array_equal(first_chip, seen[key][0])
        np.testing.assert_array_equal(second_chip, seen[key][1])
    checked = json.loads((out / "export.json").read_text())["checked_thumbnails"]
    assert checked == (len(seen) if case == "report" else 0)


def test_a_series_exports_each_interval_from_its_two_dates(tmp_path: Path, capsys) -> None:
    labels = ("2016", "2018", "2021")
    paths = write_demo_series(tmp_path, labels, scenes=1, seed=5)
    engine = FakeEngine()
    gpkg = tmp_path / "series.gpkg"
    dates = [DateInput(path, DateLabel.parse(label)) for path, label in zip(paths, labels)]
    caption_dates(dates, gpkg, lambda: on_this_machine(engine), RegionOptions(tile_size=192), log=quiet)
    seen = captioned_pixels(engine)
    review(gpkg, {("r0_c1", 1): CORRECTION, ("r1_c0", 0): None})
    out = tmp_path / "dataset"
    given = [f"--date={label}={path}" for label, path in zip(labels, paths)]
    assert export("--captions", gpkg, *given, "--out", out) == 0
    exported = chips(out)
    assert set(exported) == {("r0_c1", 1), ("r1_c0", 0)}
    for key, (first, second, record) in exported.items():
        np.testing.assert_array_equal(first, seen[key][0])
        np.testing.assert_array_equal(second, seen[key][1])
        assert (record["date_before"], record["date_after"]) == labels[key[1] : key[1] + 2]
    # The first date (its grid is the run's) and the reviewed intervals' dates are enough.
    assert export("--captions", gpkg, *given[:2], "--out", tmp_path / "first-two") == 2
    assert "the layer's run read town_2021.tif for date 2021: give it too" in capsys.readouterr().err
    package = GeoPackage(gpkg)
    with package.connection as connection:
        connection.execute('UPDATE captions SET review_status = NULL WHERE "interval" = 1')
    package.close()
    assert export("--captions", gpkg, *given[:2], "--out", tmp_path / "first-two") == 0
    assert export("--captions", gpkg, "--before", paths[0], "--after", paths[1], "--out", tmp_path / "pair") == 2
    assert "give each as --date LABEL=PATH" in capsys.readouterr().err


def other_tool_package(path: Path) -> Path:
    package = GeoPackage(path)
    package.close()
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("no captions", "has no captions layer 'captions'"),
        ("not a file", "no such file"),
        ("nothing reviewed", "nothing to export from"),
        ("other names", "the layer's run read before.tif there"),
        ("other size", "does not match the layer's run: its size is 96x96, the run's was 160x160"),
        ("other crs", "does not match the layer's run: its crs is EPSG:32632, the run's was EPSG:32631"),
        ("other pixels", "differ from what the run captioned"),
        ("date and pair", "not both"),
        ("out not empty", "is not an empty folder"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path: Path, case: str, message: str, capsys) -> None:
    before, after = write_pair(tmp_path)
    gpkg, _ = run_pair(tmp_path, before, after, report=tmp_path / "report.html")
    if case != "nothing reviewed":
        review(gpkg, {("r0_c0", 0): CORRECTION})
    rasters = ["--before", before, "--after", after]
    out = tmp_path / "dataset"
    first, _ = synthetic_pair(160, seed=9)
    if case == "no captions":
        gpkg = other_tool_package(tmp_path / "other.gpkg")
    elif case == "not a file":
        gpkg = tmp_path / "missing.gpkg"
    elif case == "other names":
        rasters[1] = write_geotiff(tmp_path / "elsewhere" / "first.tif", first, CRS, utm_transform())
    elif case == "other size":
        rasters[1] = write_geotiff(tmp_path / "small" / "before.tif", first[:96, :96], CRS, utm_transform())
    elif case == "other crs":
        rasters[1] = write_geotiff(tmp_path / "utm32" / "before.tif", first, "EPSG:32632", utm_transform())
    elif case == "other pixels":
        rasters[1] = write_geotiff(tmp_path / "again" / "before.tif", first, CRS, utm_transform())
    elif case == "date and pair":
        rasters.append(f"--date=2016={before}")
    elif case == "out not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert export("--captions", gpkg, *rasters, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert (sorted(p.name for p in out.iterdir()) == ["notes.txt"]) if case == "out not empty" else not out.exists()
