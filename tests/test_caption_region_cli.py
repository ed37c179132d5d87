"""``ccexpert caption-region``: a run with the default model, clear errors (exit 2) that keep earlier work,
an interrupted run resumed, the real command in a subprocess, and a run through the backend."""

from __future__ import annotations

import html
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ccexpert_cli as cli
from ccexpert_core.defaults import default_model, model_note
from ccexpert_core.geo.captions_layer import CAPTIONED, read_tiles
from ccexpert_core.geo.synthetic import write_geotiff
from ccexpert_core.model_card import describe_model

from geo_fixtures import CRS, ORIGIN, FakeEngine, utm_transform, write_pair

CCEXPERT = Path(sys.executable).with_name("ccexpert")


def caption_region(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["caption-region", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def paths_args(before: Path, after: Path, out: Path) -> list[str]:
    return ["--before", str(before), "--after", str(after), "--out", str(out)]


def test_default_model_captions_a_region_and_says_what_it_is(tmp_path: Path, capsys) -> None:
    before, after = write_pair(tmp_path, size=96)
    out, report = tmp_path / "captions.gpkg", tmp_path / "report.html"
    code, stdout, stderr = caption_region(
        capsys, *paths_args(before, after, out), "--tile-size", "96", "--report", str(report)
    )
    assert code == 0, stderr
    note = model_note(default_model())  # the untrained preset, or the demo model once it ships
    assert note in stderr and "1/1 tiles" in stderr
    assert "1 captioned" in stdout and str(out) in stdout and str(report) in stdout
    (tile,) = read_tiles(out)
    assert tile.status == CAPTIONED and tile.caption
    assert html.escape(describe_model(default_model()).note or "") in report.read_text()


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(tmp_path, size=96)


def _far_away(tmp_path: Path) -> Path:
    data = np.zeros((3, 32, 32), np.uint8)
    return write_geotiff(tmp_path / "far.tif", data, CRS, utm_transform(origin=(ORIGIN[0] + 10_000, ORIGIN[1])))


def _not_a_raster(tmp_path: Path) -> Path:
    path = tmp_path / "notes.tif"
    path.write_text("this is a text file named .tif\n")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_overlap", "do not overlap"),
        ("missing_before", "BEFORE raster not found"),
        ("text_tif", "cannot be read: not a raster format GDAL knows"),
        ("area_outside", "lies outside the rasters"),
        ("out_in_missing_folder", "--out: the folder"),
        ("out_not_a_geopackage", "is not a GeoPackage"),
        ("bad_overlap", "overlap must be"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, pair, capsys, monkeypatch, case: str,
                                                message: str) -> None:
    # No model should load for bad input: a stand-in that fails the test if it is asked for.
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: pytest.fail("model loaded"))
    before, after = pair
    out = tmp_path / "out.gpkg"
    extra: list[str] = []
    if case == "no_overlap":
        after = _far_away(tmp_path)
    elif case == "missing_before":
        before = tmp_path / "missing.tif"
    elif case == "text_tif":
        after = _not_a_raster(tmp_path)
    elif case == "area_outside":
        extra = ["--bounds", f"{ORIGIN[0] + 500},{ORIGIN[1] + 500},{ORIGIN[0] + 600},{ORIGIN[1] + 600}"]
    elif case == "out_in_missing_folder":
        out = tmp_path / "no" / "such" / "folder" / "out.gpkg"
    elif case == "out_not_a_geopackage":
        out.write_text("my notes\n" * 50)
    elif case == "bad_overlap":
        extra = ["--overlap", "100%"]
    code, stdout, stderr = caption_region(capsys, *paths_args(before, after, out), "--tile-size", "64", *extra)
    assert code == 2
    assert stderr.startswith("ccexpert caption-region: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    if case == "out_not_a_geopackage":
        assert out.read_text() == "my notes\n" * 50


def test_an_error_after_work_keeps_the_work(tmp_path: Path, pair, capsys, monkeypatch) -> None:
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: FakeEngine())
    out = tmp_path / "out.gpkg"
    assert caption_region(capsys, *paths_args(*pair, out), "--tile-size", "48")[0] == 0
    assert len(list(read_tiles(out))) == 4
    code, _, stderr = caption_region(capsys, *paths_args(*pair, out), "--tile-size", "64")
    assert code == 2 and "tile_size: 48 there, 64 now" in stderr
    assert len(list(read_tiles(out))) == 4


def test_interrupted_run_is_resumed_without_duplicates(tmp_path: Path, capsys, monkeypatch) -> None:
    before, after = write_pair(tmp_path, size=160)
    out = tmp_path / "out.gpkg"
    interrupted = FakeEngine(fail_on_calls=(2,), error=KeyboardInterrupt())
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: interrupted)
    args = [*paths_args(before, after, out), "--tile-size", "64", "--overlap", "16", "--batch-size", "4"]
    code, _, stderr = caption_region(capsys, *args)
    assert code == 130 and "work finished so far is kept" in stderr
    assert [t.tile_id for t in read_tiles(out)] == interrupted.calls[0]
    resumed = FakeEngine()
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: resumed)
    code, stdout, _ = caption_region(capsys, *args)
    assert code == 0 and "4 done before" in stdout
    assert not set(resumed.captioned_ids) & set(interrupted.calls[0])
    ids = [t.tile_id for t in read_tiles(out)]
    assert len(ids) == len(set(ids)) == 9


def test_the_installed_command_fails_cleanly(tmp_path: Path, pair) -> None:
    if not CCEXPERT.exists():
        pytest.skip(f"the ccexpert command is not installed next to {sys.executable}")
    before, _ = pair
    result = subprocess.run(
        [str(CCEXPERT), "caption-region", *paths_args(before, tmp_path / "nope.tif", tmp_path / "o.gpkg")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ccexpert caption-region: error: AFTER raster not found: {tmp_path / 'nope.tif'}"
    ]
    assert not (tmp_path / "o.gpkg").exists()


def test_backend_gives_the_captions_of_the_same_model_in_process(
    tmp_path: Path, capsys, request: pytest.FixtureRequest, tiny_model_dir: Path
) -> None:
    pytest.importorskip("ccexpert_core.client", reason="the backend client (ccexpert_core/client.py) is not here")
    backend_server = pytest.importorskip("backend_server", reason="the backend test helpers are not here")
    server = backend_server.auth_server(request, tiny_model_dir)
    token_file = tmp_path / "token.txt"
    token_file.write_text(f"# for the test backend\n{backend_server.TOKEN}\n")
    before, after = write_pair(tmp_path, size=64)
    local, remote = tmp_path / "local.gpkg", tmp_path / "remote.gpkg"
    assert caption_region(capsys, *paths_args(before, after, local), "--model", str(tiny_model_dir))[0] == 0
    code, _, stderr = caption_region(
        capsys, *paths_args(before, after, remote), "--backend", server.url, "--token-file", str(token_file)
    )
    assert code == 0, stderr
    assert [t.caption for t in read_tiles(remote)] == [t.caption for t in read_tiles(local)]
    token_file.write_text("wrong-token\n")
    code, _, stderr = caption_region(
        capsys, *paths_args(before, after, tmp_path / "refused.gpkg"), "--backend", server.url,
        "--token-file", str(token_file),
    )
    assert code == 2 and "refused the token" in stderr
