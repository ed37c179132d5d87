"""``caption-region``'s exit status tells the truth: 0 only when every tile (and interval) it was asked for is
captioned or skipped; a run that ends with tiles its engine failed, or stops because the engine keeps failing, exits
3 and says how to resume (bad input stays 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ccexpert_cli as cli
from ccexpert_core.geo.captions_layer import CAPTIONED, FAILED, read_tiles
from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff

from geo_fixtures import CRS, FakeEngine, utm_transform, write_pair

FAILED_TILES = 3


def caption_region(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["caption-region", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def use_engine(monkeypatch: pytest.MonkeyPatch, engine: FakeEngine) -> FakeEngine:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: engine)
    return engine


@pytest.fixture()
def args(tmp_path: Path) -> list[str]:
    """Nine tiles of 64 px in batches of two: five batches."""
    before, after = write_pair(tmp_path, size=192)
    return ["--before", str(before), "--after", str(after), "--out", str(tmp_path / "out.gpkg"), "--tile-size", "64",
            "--batch-size", "2"]


def test_a_run_that_ends_with_failed_tiles_exits_3_and_says_how_to_resume(
    tmp_path: Path, args: list[str], capsys, monkeypatch
) -> None:
    use_engine(monkeypatch, FakeEngine(fail_on_calls=(2,), error=ConnectionError("backend went away")))
    code, out, err = caption_region(capsys, *args)
    assert code == FAILED_TILES, err
    assert "now 7 captioned, 0 skipped_nodata, 2 failed" in out
    *_, last = err.strip().splitlines()
    assert last == (f"ccexpert caption-region: error: 2 of the area's 9 tiles failed (kept as 'failed' in "
                    f"{tmp_path / 'out.gpkg'}): run the same command again to caption them")
    assert sorted(t.status for t in read_tiles(tmp_path / "out.gpkg")).count(FAILED) == 2
    use_engine(monkeypatch, FakeEngine())
    code, out, err = caption_region(capsys, *args)
    assert code == 0 and "7 done before, now 2 captioned" in out, err
    assert {t.status for t in read_tiles(tmp_path / "out.gpkg")} == {CAPTIONED}


def test_a_run_stopped_by_an_engine_that_keeps_failing_exits_3(args: list[str], capsys, monkeypatch) -> None:
    use_engine(monkeypatch, FakeEngine(fail_on_calls=range(2, 100), error=ConnectionError("backend unreachable")))
    code, _, err = caption_region(capsys, *args)
    assert code == FAILED_TILES
    assert "3 batches in a row failed (last: backend unreachable)" in err and "rerun the same command" in err
    use_engine(monkeypatch, FakeEngine())
    assert caption_region(capsys, *args)[0] == 0


def test_a_series_with_failed_intervals_exits_3(tmp_path: Path, capsys, monkeypatch) -> None:
    before, after = write_pair(tmp_path, size=128)
    third = write_geotiff(tmp_path / "third.tif", synthetic_pair(128, 3)[1], CRS, utm_transform())
    use_engine(monkeypatch, FakeEngine(fail_on_calls=(1,)))
    dates = ["--date", f"2016={before}", "--date", f"2018={after}", "--date", f"2021={third}"]
    # Batches of 4 pairs: two tiles of two intervals each, the first batch failed.
    code, _, err = caption_region(capsys, *dates, "--out", str(tmp_path / "series.gpkg"), "--tile-size", "64",
                                  "--batch-size", "4")
    assert code == FAILED_TILES
    assert "4 of the area's 8 tile intervals failed" in err.strip().splitlines()[-1], err


def test_bad_input_stays_2_and_help_names_the_exit_statuses(args: list[str], capsys, monkeypatch) -> None:
    use_engine(monkeypatch, FakeEngine())
    assert caption_region(capsys, *args, "--bounds", "0,0,1,1")[0] == 2
    code, out, _ = caption_region(capsys, "--help")
    assert code == 0
    words = " ".join(out.split())
    assert "exit status: 0 when every tile asked for is captioned or skipped" in words
    assert "3 when tiles failed" in words and "2 for bad input" in words
