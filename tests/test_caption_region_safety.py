"""``caption-region`` never destroys what the user gave: outputs that would overwrite inputs or each other, runs
refused for other options, a second run on a busy output, another tool's GeoPackage, a foreign ``captions`` layer,
bad devices and folders — each refused in one line, exit 2, every existing file byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ccexpert_cli as cli
from ccexpert_core.geo.captions_layer import read_tiles
from ccexpert_core.geo.run_files import OutputLock

from geo_fixtures import FakeEngine, write_pair


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = cli.main(["caption-region", *args])
    return code, capsys.readouterr().err


def digests(*paths: Path) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.exists()}


def files_in(folder: Path) -> dict[Path, str]:
    return digests(*sorted(p for p in folder.rglob("*") if p.is_file()))


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: fake)
    return fake


@pytest.fixture()
def done(tmp_path: Path, capsys, engine: FakeEngine) -> tuple[Path, Path, Path]:
    """A finished run: BEFORE, AFTER and the GeoPackage with four captioned tiles."""
    before, after = write_pair(tmp_path, size=96)
    out = tmp_path / "out.gpkg"
    assert run(capsys, "--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48")[0] == 0
    engine.calls.clear()
    return before, after, out


def assert_refused(capsys, tmp_path: Path, engine: FakeEngine, args: list[str], message: str) -> None:
    """The run exits 2 with one line saying ``message``, captions nothing and leaves every file as it was."""
    before = files_in(tmp_path)
    code, stderr = run(capsys, *args)
    assert code == 2, stderr
    *notes, error = stderr.strip().splitlines()
    assert error.startswith("ccexpert caption-region: error: ") and message in error, stderr
    assert not any("Traceback" in line for line in notes), stderr
    assert engine.calls == []
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("target", ["out", "before", "after", "before_spelled_otherwise", "after_hard_link"])
def test_a_report_over_an_input_or_the_output_is_refused(tmp_path: Path, capsys, engine, done, target: str) -> None:
    before, after, out = done
    if target == "before_spelled_otherwise":
        report = tmp_path / "sub" / ".." / before.name
        (tmp_path / "sub").mkdir()
    elif target == "after_hard_link":
        report = tmp_path / "link.tif"
        os.link(after, report)
    else:
        report = {"out": out, "before": before, "after": after}[target]
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48", "--report",
            str(report)]
    assert_refused(capsys, tmp_path, engine, args, "is the same file as")


def test_an_output_over_an_input_is_refused(tmp_path: Path, capsys, engine) -> None:
    before, after = write_pair(tmp_path, size=96)
    for out in (before, after):
        args = ["--before", str(before), "--after", str(after), "--out", str(out)]
        assert_refused(capsys, tmp_path, engine, args, f"--out {out} is the same file as")


def test_a_run_refused_for_other_options_leaves_the_file_as_it_was(tmp_path: Path, capsys, engine, done) -> None:
    before, after, out = done
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "64"]
    assert_refused(capsys, tmp_path, engine, args, "tile_size: 48 there, 64 now")


def test_a_run_refused_for_another_model_leaves_the_file_as_it_was(tmp_path: Path, capsys, monkeypatch, done) -> None:
    before, after, out = done
    other = FakeEngine()
    other.model_id = "another-model"
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: other)
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48"]
    assert_refused(capsys, tmp_path, other, args, "model_id: fake-engine there, another-model now")


def test_a_report_is_written_whole_or_not_at_all(tmp_path: Path, capsys, engine, done) -> None:
    before, after, out = done
    report = tmp_path / "report.html"
    report.write_text("an older report\n")
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48"]
    assert run(capsys, *args, "--report", str(report))[0] == 0
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_a_bad_report_folder_is_refused_before_any_tile(tmp_path: Path, capsys, engine) -> None:
    before, after = write_pair(tmp_path, size=96)
    base = ["--before", str(before), "--after", str(after), "--out", str(tmp_path / "out.gpkg")]
    assert_refused(capsys, tmp_path, engine, [*base, "--report", str(tmp_path / "no" / "r.html")], "does not exist")
    assert_refused(capsys, tmp_path, engine, [*base, "--report", str(tmp_path)], "is a folder")
    assert not (tmp_path / "out.gpkg").exists()


def test_a_second_run_on_a_busy_output_is_refused(tmp_path: Path, capsys, engine, done) -> None:
    before, after, out = done
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48"]
    with OutputLock(out, "ccexpert caption-region (the first run)"):
        assert_refused(capsys, tmp_path, engine, args, "is being written by another run (ccexpert caption-region")
    assert run(capsys, *args)[0] == 0  # released: the next run goes ahead
    assert not out.with_name(out.name + ".lock").exists()


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path, capsys, engine, done) -> None:
    before, after, out = done
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from ccexpert_core.geo.run_files import OutputLock; "
            f"lock = OutputLock({str(out)!r}, 'holder'); lock.acquire(); print('held', flush=True); time.sleep(120)"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48"]
        assert run(capsys, *args)[0] == 2
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        while (code := run(capsys, *args)[0]) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 0
    finally:
        holder.kill()
        holder.wait()


def _other_tools_geopackage(path: Path) -> Path:
    pyogrio = pytest.importorskip("pyogrio")
    import numpy as np
    from shapely.geometry import Point

    geometry = np.array([Point(431010, 4828990).wkb], dtype=object)
    pyogrio.raw.write(path, geometry, [np.array(["well"], dtype=object)], ["name"], driver="GPKG", layer="wells",
                      geometry_type="Point", crs="EPSG:32631")
    return path


def test_another_tools_geopackage_is_refused_unless_asked(tmp_path: Path, capsys, engine) -> None:
    before, after = write_pair(tmp_path, size=96)
    out = _other_tools_geopackage(tmp_path / "project.gpkg")
    args = ["--before", str(before), "--after", str(after), "--out", str(out)]
    assert_refused(capsys, tmp_path, engine, args, "is a GeoPackage of another tool (layers wells)")
    assert run(capsys, *args, "--add-to-existing")[0] == 0
    assert len(list(read_tiles(out))) == 1
    import pyogrio

    assert {name for name, _ in pyogrio.list_layers(out)} >= {"wells", "captions"}
    assert run(capsys, *args)[0] == 0  # resuming its own layers needs no option


def test_a_captions_layer_of_another_schema_is_refused(tmp_path: Path, capsys, engine, done) -> None:
    before, after, out = done
    with sqlite3.connect(out) as connection:
        connection.execute("ALTER TABLE captions RENAME COLUMN caption TO text")
    args = ["--before", str(before), "--after", str(after), "--out", str(out), "--tile-size", "48"]
    assert_refused(capsys, tmp_path, engine, args, "is not a CCExpert captions layer (it has no field caption)")


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--overlap", "1e400%", "argument --overlap: must be pixels"),
        ("--overlap", "-3", "argument --overlap: must be pixels"),
        ("--resolution", "nan", "argument --resolution: must be a finite number"),
        ("--resolution", "-1", "argument --resolution: must be in (0"),
        ("--resolution", "1e-6", "the area needs up to"),
        ("--resolution", "1e-9", "more than GDAL can read"),
        ("--range", "5,5", "argument --range: MIN must be less than MAX"),
        ("--range", "10,0", "argument --range: MIN must be less than MAX"),
        ("--range", "0,inf", "argument --range: must be a finite number"),
        ("--bounds", "0,0,nan,1", "argument --bounds: must be a finite number"),
        ("--bounds", "5,0,1,1", "XMIN < XMAX"),
        ("--tile-size", "2", "argument --tile-size: must be from 32"),
        ("--batch-size", "0", "argument --batch-size: must be from 1"),
        ("--max-nodata", "nan", "argument --max-nodata: must be a finite number"),
        ("--max-nodata", "1.5", "argument --max-nodata: must be in [0, 1]"),
        ("--backend", "127.0.0.1:8000", "must start with http:// or https://"),
        ("--backend", "http://", "names no host"),
        ("--backend", "ftp://example.org", "must start with http:// or https://"),
        ("--backend", "http://localhost:99999", "port that is not a number"),
        ("--device", "bogus", "argument --device: must be auto, cpu, cuda or cuda:N"),
        ("--device", "cuda:0", "no CUDA GPU is visible"),
    ],
)
def test_every_bad_value_is_one_line(tmp_path: Path, capsys, engine, option: str, value: str, message: str) -> None:
    before, after = write_pair(tmp_path, size=96)
    args = ["--before", str(before), "--after", str(after), "--out", str(tmp_path / "out.gpkg"), f"{option}={value}"]
    if option == "--device":
        import torch

        if torch.cuda.is_available() and value.startswith("cuda"):
            pytest.skip("this machine has a GPU")
    assert_refused(capsys, tmp_path, engine, args, message)
    assert "Traceback" not in capsys.readouterr().err


_NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["", "abc", "1e400", "-0", "0x10", "1,5", " 7 "]),
)
_OPTIONS = {
    "--tile-size": st.one_of(st.integers(-5, 5000).map(str), _NUMBER_TEXT),
    "--overlap": st.one_of(st.integers(-5, 400).map(str), _NUMBER_TEXT.map(lambda t: t + "%"), _NUMBER_TEXT),
    "--resolution": st.one_of(st.floats(1e-9, 100).map(repr), _NUMBER_TEXT),
    "--range": st.tuples(_NUMBER_TEXT, _NUMBER_TEXT).map(",".join),
    "--bounds": st.tuples(*[st.floats(431000 - 50, 431000 + 150).map(repr)] * 2,
                          *[st.floats(4828900, 4829050).map(repr)] * 2).map(lambda b: ",".join((b[0], b[2], b[1], b[3]))),
    "--batch-size": st.one_of(st.integers(-3, 300).map(str), _NUMBER_TEXT),
    "--max-nodata": st.one_of(st.floats(-1, 2).map(repr), _NUMBER_TEXT),
    "--max-tiles": st.one_of(st.integers(-1, 20).map(str), _NUMBER_TEXT),
    "--bands": st.lists(st.integers(-1, 5), min_size=0, max_size=4).map(lambda b: ",".join(map(str, b))),
    "--backend": st.sampled_from(["", "localhost", "http://", "ftp://h", "http://h:0", "http://h:x", "https://:80"]),
    "--device": st.sampled_from(["auto", "cpu", "CPU", "bogus", "cuda:x", "", "cpu:0"]),
}


# No shrinking: each example is a whole run, and a failure's example is printed as it was found.
@settings(max_examples=80, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(_OPTIONS)), st.just(None), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({key: _OPTIONS[key] for key in keys})))
def test_any_option_values_end_in_exit_0_or_2_never_a_traceback(chosen: dict[str, str], engine, capsys) -> None:
    with tempfile.TemporaryDirectory() as folder:
        before, after = write_pair(Path(folder), size=96)
        args = ["--before", str(before), "--after", str(after), "--out", str(Path(folder) / "out.gpkg")]
        args += [f"{option}={value}" for option, value in chosen.items()]
        code = cli.main(["caption-region", *args])  # an uncaught exception fails the test, with its example
        stderr = capsys.readouterr().err
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code == 2:
        assert stderr.strip().splitlines()[-1].startswith("ccexpert caption-region: error: "), stderr
