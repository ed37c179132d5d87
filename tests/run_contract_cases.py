"""The run contract's cases, run in both Pythons: the project's (tests/test_run_contract.py) and QGIS's
(tests/qgis/test_run_contract.py), on the module the plugin bundles. Standard library and pytest only."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccexpert_core.geo import run_contract as contract
from ccexpert_core.geo.dates import DateLabel
from ccexpert_core.geo.grid import Tile, TileGrid

GT = (431000.0, 1.0, 0.0, 4829000.0, 0.0, -1.0)


def test_dates_are_named_before_and_after_or_by_their_labels() -> None:
    assert contract.date_roles(2) == ["BEFORE", "AFTER"]
    assert contract.date_roles(3, ["2016", None, DateLabel.parse("2021")]) == ["date 2016", "date 2", "date 2021"]
    assert contract.date_roles(3) == ["date 1", "date 2", "date 3"]


def test_a_run_captions_consecutive_intervals_and_first_to_last_when_asked() -> None:
    assert contract.run_intervals(2) == ((0, 1),) == contract.run_intervals(2, first_to_last=True)
    assert contract.run_intervals(4) == ((0, 1), (1, 2), (2, 3))
    assert contract.run_intervals(4, first_to_last=True) == ((0, 1), (1, 2), (2, 3), (0, 3))


def test_labels_are_parsed_and_refused_out_of_order() -> None:
    labels = contract.parse_labels(["2016", "", "2021-05"], ["a.tif", "b.tif", "c.tif"])
    assert [str(label) if label else None for label in labels] == ["2016", None, "2021-05"]
    with pytest.raises(contract.RunRefused, match=r"date 2 \(b.tif\): 'May 2018' is not a date"):
        contract.parse_labels(["2016", "May 2018", "2021"], ["a.tif", "b.tif", "c.tif"])
    with pytest.raises(contract.RunRefused, match="b.tif"):
        contract.parse_labels(["2021", "2016"], ["a.tif", "b.tif"])


def test_each_interval_records_its_dates_and_rasters() -> None:
    dating = contract.Dating.of([DateLabel.parse("2016"), None, "2021"], ["a.tif", "b.tif", "c.tif"],
                                contract.run_intervals(3, first_to_last=True))
    assert dating.fields(1) == {"date_before": None, "date_after": "2021", "before_source": "b.tif",
                                "after_source": "c.tif"}
    assert dating.fields(2)["date_before"] == "2016" and dating.fields(2)["after_source"] == "c.tif"
    assert dating.consecutive() == {0: (0, 1), 1: (1, 2)}
    assert contract.history_date(None, 1) == "date 2" and contract.history_date("2018", 1) == "2018"


def test_stored_options_are_worded_once_and_read_back() -> None:
    grid = TileGrid(100, 80, GT, 32, 4)
    two = contract.stored_options(grid, "EPSG:32631", (3, 2, 1), None, 0.5, ["b.tif", "a.tif"], [None, None],
                                  contract.run_intervals(2), "m")
    assert two == {
        "crs": "EPSG:32631", "geotransform": "431000,1,0,4829000,0,-1", "size": "100x80", "tile_size": "32",
        "overlap_px": "4", "bands": "3,2,1", "value_range": "stretch 2-98%", "max_nodata": "0.5",
        "before_source": "b.tif", "after_source": "a.tif", "model_id": "m",
    }
    series = contract.stored_options(grid, "EPSG:32631", (1,), (0.0, 3000.0), 1, ["x.tif", "y.tif", "z.tif"],
                                     ["2016", None, "2021"], contract.run_intervals(3, True), "m")
    assert series["value_range"] == "0.0,3000.0" and series["dates"] == "2016=x.tif;=y.tif;2021=z.tif"
    assert series["intervals"] == "0-1,1-2,0-2" and series["after_source"] == "z.tif"
    run = contract.read_stored(series)
    assert (run.bands, run.value_range, run.tile_size, run.overlap_px) == ((1,), (0.0, 3000.0), 32, 4)
    assert [(d.label, d.name) for d in run.dates] == [("2016", "x.tif"), ("", "y.tif"), ("2021", "z.tif")]
    assert run.intervals == ((0, 1), (1, 2), (0, 2)) and run.role(1) == "date 2"
    assert run.described() == "2016=x.tif, y.tif, 2021=z.tif"
    assert run.grid_mismatch(grid) is None and run.grid_mismatch(TileGrid(101, 80, GT, 32, 4)) == "size"
    plain = contract.read_stored(two)
    assert [d.name for d in plain.dates] == ["b.tif", "a.tif"] and plain.intervals == ((0, 1),)
    assert plain.role(0) == "BEFORE" and plain.value_range is None


def test_stored_options_that_cannot_be_used_are_refused_in_words() -> None:
    with pytest.raises(contract.RunRefused, match="crs is missing"):
        contract.read_stored({"geotransform": "1"})
    broken = {key: "x" for key in contract.GRID_OPTIONS}
    with pytest.raises(contract.RunRefused, match="cannot be read"):
        contract.read_stored(broken)


def test_options_are_compared_one_way_the_crs_by_what_it_is() -> None:
    stored = {"crs": "EPSG:32631", "tile_size": "384", "model_id": "old-path"}

    def same(first: str, second: str) -> bool:  # each tool's CRS library; here: an EPSG code against "its WKT"
        return {first, second} == {"EPSG:32631", "PROJCS[WGS 84 / UTM zone 31N]"}

    assert contract.changed_option(stored, {"crs": "PROJCS[WGS 84 / UTM zone 31N]"}, same) is None
    assert contract.changed_option(stored, {"crs": "EPSG:4326"}, same) == "crs"
    assert contract.changed_option(stored, {"tile_size": "256"}, same) == "tile_size"
    assert contract.changed_option(stored, {"model_id": "new"}, same, {"model_id": ("old-path",)}) is None
    assert contract.changed_option(stored, {"model_id": "new"}, same) == "model_id"
    message = contract.other_options("out.gpkg", stored, {"tile_size": "256"}, "tile_size", "rerun with the same ones")
    assert message == "out.gpkg holds tiles made with other options (tile_size: 384 there, 256 now): rerun with the same ones"
    assert contract.crs_text(32631, "WKT") == "EPSG:32631" and contract.crs_text(None, "WKT") == "WKT"


def test_what_is_left_is_every_interval_not_captioned_or_skipped() -> None:
    tiles = [Tile(0, c, 64 * c, 0, 64, 64) for c in range(3)]
    finished = {("r0_c0", 0), ("r0_c0", 1), ("r0_c1", 1)}
    assert contract.still_to_do(tiles, 2, finished) == {"r0_c1": [0], "r0_c2": [0, 1]}
    assert contract.unfinished(tiles, 2, finished) == 3
    assert contract.skipped([0.1, 0.6, 0.0], (0, 1), 0.5) and not contract.skipped([0.1, 0.6, 0.0], (0, 2), 0.5)


def test_a_run_stops_after_three_failed_batches_in_a_row() -> None:
    policy = contract.FailurePolicy()
    assert policy.after_batch(OSError("down")) is None and policy.after_batch(OSError("down")) is None
    assert policy.after_batch(None) is None  # a batch that worked starts the count again
    assert policy.after_batch(OSError("a")) is None and policy.after_batch(OSError("b")) is None
    assert policy.after_batch(OSError("c")) == "3 batches in a row failed (last: c)"


def test_areas_that_need_too_many_tiles_are_refused_from_arithmetic() -> None:
    grid = TileGrid(10**6, 10**6, GT, 384)  # a mistyped resolution: billions of tiles, never made
    with pytest.raises(contract.RunRefused, match=r"up to 6,786,025 tiles of 384 px, over --max-tiles \(1,000,000\)"):
        contract.check_tile_count(grid, None, contract.RunSettings(), "--max-tiles")
    small = (431000.0, 4829000.0 - 1000, 431000.0 + 1000, 4829000.0)  # 1,000 m: at most 4 tiles a side
    assert contract.check_tile_count(grid, small, contract.RunSettings(max_tiles=16)) == 16


def test_settings_are_checked_before_anything_is_opened() -> None:
    contract.RunSettings().check()
    for bad, words in [
        ({"tile_size": 16}, "tile size"), ({"overlap": "120%"}, "overlap"), ({"bands": (1, 2)}, "one or three"),
        ({"value_range": (5.0, 5.0)}, "value range"), ({"resolution": 0.0}, "resolution"),
        ({"batch_size": 0}, "batch size"), ({"max_nodata": 1.5}, "nodata"), ({"max_tiles": 0}, "tile limit"),
    ]:
        with pytest.raises(contract.RunRefused, match=words):
            contract.RunSettings(**bad).check()


def test_a_batch_holds_every_interval_of_its_tiles_within_a_request() -> None:
    settings = contract.RunSettings(batch_size=8)
    assert settings.tiles_per_batch(1) == 8 and settings.tiles_per_batch(3) == 2 and settings.tiles_per_batch(9) == 1
    assert settings.tiles_per_batch(2, pairs_per_request=4) == 2
    with pytest.raises(contract.RunRefused, match="a tile brings 5 pairs"):
        settings.tiles_per_batch(5, pairs_per_request=4)


def test_the_lock_refuses_a_second_run_on_the_same_file(tmp_path: Path) -> None:
    out = tmp_path / "captions.gpkg"
    with contract.output_locked(out, "the first run"):
        with pytest.raises(contract.RunRefused, match="the first run"), contract.output_locked(out, "a second run"):
            pass
    with contract.output_locked(out, "a later run"):
        pass
