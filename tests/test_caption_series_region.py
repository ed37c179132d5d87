"""A region over a series of dates: every interval captioned as a two-date run of its dates would be, the dates on
every feature, a history layer per tile, resume per tile and interval, each image through the vision tower once,
and bad series refused in one line with nothing written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

import ccexpert_cli as cli
from ccexpert_core.captions import MODEL_KINDS
from ccexpert_core.geo.captions_layer import CAPTIONED, read_tiles
from ccexpert_core.geo.dates import DateLabel
from ccexpert_core.geo.engine import InProcessEngine
from ccexpert_core.geo.gpkg import GeoPackage
from ccexpert_core.geo.region import DateInput, RegionOptions, caption_dates, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.geo.synthetic import write_demo_series, write_geotiff

from geo_fixtures import CRS, ORIGIN, FakeEngine, utm_transform

DATES = ("2016", "2018", "2021")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo town (2 × 2 scenes of 384 px) at three dates."""
    return write_demo_series(tmp_path_factory.mktemp("series"), DATES, scenes=2, seed=5)


@pytest.fixture(scope="module")
def demo_engine() -> InProcessEngine:
    from ccexpert_core.defaults import DEMO_MODEL_DIR
    from ccexpert_core.inference import Captioner

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    return InProcessEngine(Captioner.load(DEMO_MODEL_DIR, device="cpu"))


def quiet(message: str) -> None:
    pass


def features(out: Path) -> dict[tuple[str, int], object]:
    return {(t.tile_id, t.interval): t for t in read_tiles(out)}


def history(out: Path) -> dict[str, tuple]:
    with sqlite3.connect(out) as connection:
        rows = connection.execute("SELECT tile_id, timeline, changes, first_change, intervals FROM history")
        return {row[0]: row[1:] for row in rows}


def test_each_interval_is_captioned_as_a_two_date_run_of_its_dates(tmp_path: Path, series, demo_engine) -> None:
    dates = [DateInput(path, DateLabel.parse(label)) for path, label in zip(series, DATES)]
    out = tmp_path / "series.gpkg"
    summary = caption_dates(dates, out, lambda: on_this_machine(demo_engine), RegionOptions(), log=quiet)
    assert summary.tiles == 4 and summary.counts[CAPTIONED] == 8
    stored = features(out)
    for k in range(2):
        pair_out = tmp_path / f"pair{k}.gpkg"
        caption_region(series[k], series[k + 1], pair_out, lambda: on_this_machine(demo_engine), RegionOptions(), log=quiet)
        for tile in read_tiles(pair_out):
            in_series = stored[tile.tile_id, k]
            assert in_series.caption == tile.caption
            assert in_series.confidence == pytest.approx(tile.confidence, abs=1e-5)
            assert (in_series.date_before, in_series.date_after) == (DATES[k], DATES[k + 1])
    assert all(feature.change_kind is None or feature.change_detected for feature in stored.values())
    timelines = history(out)
    assert set(timelines) == {"r0_c0", "r0_c1", "r1_c0", "r1_c1"}
    for tile_id, (timeline, changes, first_change, intervals) in timelines.items():
        told = [stored[tile_id, k] for k in range(2)]
        assert timeline == "; ".join(f"{DATES[k]}→{DATES[k + 1]}: {told[k].caption}" for k in range(2))
        assert changes == sum(bool(t.change_detected) for t in told) and intervals == 2
        changed = [k for k in range(2) if told[k].change_detected]
        assert first_change == (f"{DATES[changed[0]]}→{DATES[changed[0] + 1]}" if changed else None)


def test_the_demo_model_sees_the_series_changes(tmp_path: Path, series, demo_engine) -> None:
    from ccexpert_core.data.synthetic import synthetic_town_series

    truth = synthetic_town_series(2, 2, 3, seed=5).truth
    out = tmp_path / "series.gpkg"
    caption_dates([DateInput(p) for p in series], out, lambda: on_this_machine(demo_engine), RegionOptions(), log=quiet)
    stored = features(out)
    scenes = [f"r{r}_c{c}" for r in range(2) for c in range(2)]
    right = [stored[tile, k].change_detected == (kind is not None)
             for tile, kinds in zip(scenes, truth) for k, kind in enumerate(kinds)]
    assert sum(right) >= 7, (truth, [(t.tile_id, t.interval, t.caption) for t in stored.values()])
    kinds = [stored[tile, k].change_kind == MODEL_KINDS[kind]
             for tile, kinds in zip(scenes, truth) for k, kind in enumerate(kinds) if kind]
    assert sum(kinds) >= len(kinds) - 1
    # Dated by their metadata (TIFFTAG_DATETIME), as a camera would have written it.
    assert {(t.date_before, t.date_after) for t in stored.values()} == {
        ("2016-06-15", "2018-06-15"), ("2018-06-15", "2021-06-15")}


def test_each_image_goes_through_the_vision_tower_once(tmp_path: Path, series, demo_engine) -> None:
    seen = []
    tower = demo_engine.captioner.model.model.vision_tower
    handle = tower.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        caption_dates([DateInput(p) for p in series], tmp_path / "s.gpkg", lambda: on_this_machine(demo_engine),
                      RegionOptions(batch_size=4), log=quiet)
    finally:
        handle.remove()
    assert sum(seen) == 4 * 3  # tiles × dates, not tiles × 2 intervals × 2 images


def test_a_series_resumes_per_tile_and_interval(tmp_path: Path, series) -> None:
    out = tmp_path / "series.gpkg"
    dates = [DateInput(p) for p in series]
    first = FakeEngine()
    caption_dates(dates, out, lambda: on_this_machine(first), RegionOptions(tile_size=192), log=quiet)
    assert len(features(out)) == 16 * 2
    package = GeoPackage(out)  # the spatial index's triggers call functions a plain sqlite3 connection lacks
    with package.connection as connection:
        connection.execute("UPDATE captions SET status = 'failed' WHERE tile_id = 'r1_c2' AND interval = 1")
    package.close()
    resumed = FakeEngine()
    summary = caption_dates(dates, out, lambda: on_this_machine(resumed), RegionOptions(tile_size=192), log=quiet)
    assert summary.already_done == 15 and resumed.captioned_ids == ["r1_c2"]
    assert len(resumed.pairs) == 1  # only the failed interval, not the tile's other one
    assert len(features(out)) == 32 and all(t.status == CAPTIONED for t in features(out).values())


def test_first_to_last_adds_an_interval_and_the_history_counts_consecutive_ones(tmp_path: Path, series) -> None:
    out = tmp_path / "series.gpkg"
    caption_dates([DateInput(p) for p in series], out, lambda: on_this_machine(FakeEngine()), RegionOptions(tile_size=384, first_to_last=True),
                  log=quiet)
    stored = features(out)
    assert {k for _, k in stored} == {0, 1, 2}
    assert {(t.date_before, t.date_after) for (_, k), t in stored.items() if k == 2} == {("2016-06-15", "2021-06-15")}
    assert all(row[3] == 2 for row in history(out).values())


def run(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["caption-region", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "dates, message",
    [
        (["2016"], "a series needs two or more dates"),
        (["2018", "2016", "2021"], "2016 (town_2018.tif) comes before 2018"),
        (["2016", "2016", "2021"], "repeats 2016"),
        (["2016", "2016-05", "2021"], "overlaps 2016"),
        (["2016", "far", "2021"], "do not overlap"),
        (["2016", "2018", "notadate"], "is not a date"),
    ],
)
def test_a_bad_series_is_one_line_and_nothing_is_written(tmp_path: Path, series, capsys, monkeypatch, dates,
                                                         message) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: pytest.fail("model loaded"))
    paths = list(series)
    if "far" in dates:
        far = np.zeros((3, 64, 64), np.uint8)
        paths[1] = write_geotiff(tmp_path / "far.tif", far, CRS,
                                 utm_transform(origin=(ORIGIN[0] + 50_000, ORIGIN[1])))
        dates = ["2016", "2018", "2021"]
    arguments = [f"--date={label}={path}" for label, path in zip(dates, paths)]
    out = tmp_path / "out.gpkg"
    code, stderr = run(capsys, *arguments, "--out", str(out))
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("ccexpert caption-region: error: ")
    assert message in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob("*.lock"))


def test_two_dates_get_their_dates_from_the_options(tmp_path: Path, series, capsys, monkeypatch) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: FakeEngine())
    out = tmp_path / "pair.gpkg"
    code, stderr = run(capsys, "--before", str(series[0]), "--after", str(series[1]), "--before-date", "2016-04",
                       "--after-date", "2018", "--out", str(out), "--tile-size", "384")
    assert code == 0, stderr
    assert {(t.date_before, t.date_after, t.interval) for t in read_tiles(out)} == {("2016-04", "2018", 0)}
    with sqlite3.connect(out) as connection:
        assert connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 'history'").fetchone()[0] == 0
