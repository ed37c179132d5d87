"""A run killed anywhere, or stopped by a full disk, resumes whole: ``caption-region`` on a three-date series is
killed (SIGKILL, in a process of its own) at chosen points of its writer, or its disk fills at a chosen page; the
next run, with nothing in the way, leaves the file an uninterrupted run leaves (captions, history, change areas,
layers GDAL lists, R-trees, integrity), and ``export-dataset`` reads a file a killed run left.

Where the writer is killed is chosen, never timed (bench/kill_resume.py: right after the Nth ``extend_extent``,
inside a transaction, with a small page cache so that the transaction's pages reach the file before its commit: a
kill there leaves a hot journal, as a kill during a commit does). A full disk is SQLite's ``max_page_count``: past
it every write fails with SQLITE_FULL, "database or disk is full", the error a full disk gives.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import ccexpert_cli as cli
from ccexpert_core.geo.gpkg import GeoPackage

from geo_fixtures import FakeEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from kill_resume import (  # noqa: E402
    CHANGE_MAP,
    KILLED,
    contents,
    differences,
    hot_journal,
    limited_connect,
    run_killed,
    series_args,
)

#: The feature layers of a series run with a change-map model.
LAYERS = {"captions", "changes", "history"}
pyogrio = pytest.importorskip("pyogrio", reason="pyogrio (GDAL/OGR for Python) lists the layers as GDAL sees them")


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in this process caption with the stand-in engine the killed child uses."""
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: FakeEngine(change_map=CHANGE_MAP))


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a three-date series (2 × 2 tiles of 48 px)."""
    folder = tmp_path_factory.mktemp("series")
    series_args(folder, folder / "unused.gpkg")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(rasters: Path) -> dict[str, object]:
    """What a run that nothing stops leaves."""
    out = rasters / "uninterrupted.gpkg"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: FakeEngine(change_map=CHANGE_MAP))
        assert cli.main(["caption-region", *series_args(rasters, out)]) == 0
    found = contents(out)
    assert found["history"] and found["changes"] and set(found["gdal_layers"]) >= LAYERS
    return found


def resume(rasters: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    """Run again with nothing in the way; its stderr."""
    capsys.readouterr()
    code = cli.main(["caption-region", *series_args(rasters, out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_a_run_killed_mid_commit_resumes_whole(rasters: Path, uninterrupted, tmp_path: Path, capsys) -> None:
    out = tmp_path / "killed.gpkg"
    killed = run_killed(series_args(rasters, out), kill_at=1)  # inside the first batch's transaction
    assert killed.returncode == KILLED, killed.stderr
    assert hot_journal(out)  # the first batch's pages are in the file, the journal holds what to put back
    err = resume(rasters, out, capsys)
    assert "0 already in" in err and "4 to do" in err, err  # the killed batch was undone, and is done again
    assert differences(contents(out), uninterrupted) == []
    assert not out.with_name(out.name + "-journal").exists()


@pytest.mark.parametrize("kill_at", [2, 5, 6, 7, 9])
def test_a_kill_between_a_batchs_captions_and_its_changes_or_history_resumes_to_the_same_file(
    rasters: Path, uninterrupted, tmp_path: Path, capsys, kill_at: int
) -> None:
    # A batch of two tiles of three dates: its captions (call 1), four change areas (2-5), two histories (6-7).
    out = tmp_path / "killed.gpkg"
    assert run_killed(series_args(rasters, out), kill_at=kill_at).returncode == KILLED
    resume(rasters, out, capsys)
    assert differences(contents(out), uninterrupted) == []


def test_export_dataset_reads_a_file_a_killed_writer_left(rasters: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reviewed.gpkg"
    assert cli.main(["caption-region", *series_args(rasters, out)]) == 0
    package = GeoPackage(out)
    with package.transaction() as connection:
        connection.execute("UPDATE captions SET review_status = 'accepted' WHERE tile_id = 'r0_c0'")
    package.close()
    # A writer killed while its transaction's pages are in the file (long captions: many pages, a small cache).
    writer = subprocess.run([sys.executable, "-c", (
        "import os, signal\n"
        "from ccexpert_core.geo.gpkg import GeoPackage\n"
        f"connection = GeoPackage({str(out)!r}).connection\n"
        "connection.execute('PRAGMA cache_size = 2')\n"
        "connection.execute(\"UPDATE captions SET caption = 'half written ' || hex(randomblob(20000))\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )], capture_output=True, text=True)
    assert writer.returncode == KILLED and hot_journal(out), writer.stderr
    dates = series_args(rasters, out)[:6]  # --date DATE=PATH, three times
    capsys.readouterr()
    code = cli.main(["export-dataset", "--captions", str(out), *dates, "--out", str(tmp_path / "dataset")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "exported 2 tiles (0 corrected, 2 accepted)" in captured.out
    assert "half written" not in (tmp_path / "dataset" / "pairs.json").read_text()


def gdal_lists(out: Path) -> list[str]:
    """The layers (and attribute tables) GDAL finds in ``out``: ``ogrinfo``'s list where it is installed, else
    GDAL's through pyogrio."""
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        return sorted(str(name) for name, _ in pyogrio.list_layers(out))
    listed = subprocess.run([ogrinfo, "-ro", "-q", str(out)], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(": ", 1)[1].split(" (")[0] for line in listed.splitlines() if ": " in line)


def test_a_disk_that_fills_at_any_page_then_frees_leaves_a_file_gdal_opens_whole(
    rasters: Path, uninterrupted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pages = (rasters / "uninterrupted.gpkg").stat().st_size // 4096
    connect = sqlite3.connect
    for limit in range(1, pages + 1):
        out = tmp_path / f"full_{limit}.gpkg"
        monkeypatch.setattr(sqlite3, "connect", limited_connect(max_pages=limit))
        code = cli.main(["caption-region", *series_args(rasters, out)])
        err = capsys.readouterr().err
        assert code == 0 or (code == 2 and err.strip().splitlines()[-1].endswith("database or disk is full")), err
        monkeypatch.setattr(sqlite3, "connect", connect)  # the space freed
        resume(rasters, out, capsys)
        assert differences(contents(out), uninterrupted) == [], limit
    assert set(gdal_lists(tmp_path / "full_12.gpkg")) >= LAYERS


def test_a_file_left_without_its_geopackage_rows_and_index_triggers_is_repaired(
    rasters: Path, uninterrupted, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "damaged.gpkg"
    shutil.copy(rasters / "uninterrupted.gpkg", out)
    # What a full disk left with earlier versions: tables GDAL does not list, an R-tree without its triggers.
    with sqlite3.connect(out) as connection:
        for table in ("gpkg_contents", "gpkg_geometry_columns"):
            connection.execute(f"DELETE FROM {table} WHERE table_name IN ('captions', 'history')")
        for (trigger,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE "
                                             "'rtree_changes_geom_%'").fetchall():
            connection.execute(f'DROP TRIGGER "{trigger}"')
    assert set(gdal_lists(out)) & LAYERS == {"changes"}
    err = resume(rasters, out, capsys)
    assert "4 already in" in err and "0 to do" in err, err
    assert set(gdal_lists(out)) >= LAYERS
    assert differences(contents(out), uninterrupted) == []
    extents = pyogrio.read_info(out, layer="captions")["total_bounds"]
    assert tuple(extents) == tuple(pyogrio.read_info(rasters / "uninterrupted.gpkg", layer="captions")["total_bounds"])
    package = GeoPackage(out)
    with package.transaction() as connection:  # the repaired R-tree follows a change again
        connection.execute("UPDATE changes SET geom = NULL WHERE tile_id = 'r0_c0'")
        assert connection.execute("SELECT count(*) FROM rtree_changes_geom").fetchone()[0] == \
            connection.execute("SELECT count(*) FROM changes WHERE geom IS NOT NULL").fetchone()[0]
    package.close()
