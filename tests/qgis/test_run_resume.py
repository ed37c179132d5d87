"""The plugin's run keeps the command's promises about its output: the lock follows the file (a symlink, another
spelling or a hard link to a GeoPackage a run holds is refused; a file of several names is never written), and a run
killed anywhere in a batch (in a process of its own: tests/qgis/killed_run.py) resumes to the file an uninterrupted
run writes: a batch's captions, change areas and histories are one transaction; Processing fails (an exception,
not a result) when tiles failed, saying how to resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qgis_plugin.job import Job, RasterInput, plan_job, run_job
from qgis_plugin.shared_modules import run_files

from conftest import Feedback
from rasters import scene_pair, write_geotiff, write_pair
from scripted_backend import ScriptedBackend
from standin import start_standin

SIZE, TILE = 128, 64
NOBODY = "http://127.0.0.1:9"  # no backend there: runs refused before asking one


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A before/after pair of 128 px: 4 tiles of 64 px."""
    return write_pair(tmp_path_factory.mktemp("scene"), SIZE)


def job(scene: tuple[Path, Path], output: Path, url: str = NOBODY, **changes) -> Job:
    values = {
        "rasters": (RasterInput.from_source(str(scene[0])), RasterInput.from_source(str(scene[1]))),
        "output": str(output), "backend_urls": (url,), "tile_size": TILE, "batch_size": 1, "retry_budget_s": 0.0,
    }
    return Job(**{**values, **changes})


@pytest.fixture()
def written(qgis_app, scene: tuple[Path, Path], tmp_path: Path, request) -> Path:
    """A GeoPackage the plugin wrote with every tile captioned by the stand-in backend."""
    standin = start_standin(request, "--batch-s", "0", python=sys.executable)
    output = tmp_path / "out.gpkg"
    summary = run_job(job(scene, output, standin.url), Feedback())
    assert summary.error is None and summary.counts["captioned"] == 4, summary
    return output


def test_a_run_through_another_path_to_a_held_file_is_refused(qgis_app, scene, written: Path) -> None:
    folder = written.parent
    (folder / "sub").mkdir()
    (folder / "link.gpkg").symlink_to(written)
    paths = {"symlink": folder / "link.gpkg", "spelling": folder / "sub" / ".." / written.name}
    before = written.read_bytes()
    with run_files.OutputLock(written, "the CCExpert QGIS plugin (the first run)"):
        for how, path in paths.items():
            summary = run_job(job(scene, path), Feedback())
            assert summary.error and "is being written by another run (the CCExpert QGIS plugin (the first run)" \
                in summary.error, (how, summary.error)
        os.link(written, folder / "hard.gpkg")  # a second name made while the first run writes
        summary = run_job(job(scene, folder / "hard.gpkg"), Feedback())
        assert summary.error and "has 2 names (hard links)" in summary.error, summary.error
    summary = run_job(job(scene, written), Feedback())  # released, but still two names: refused
    assert summary.error and "has 2 names (hard links)" in summary.error, summary.error
    assert written.read_bytes() == before and not list(folder.glob(f"*{run_files.LOCK_SUFFIX}"))


CHANGE_MAP = [[0.9, 0.9, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1], [0.1] * 4, [0.1] * 4]


def captioned(tile_ids: list[str]) -> list[dict]:
    """Each tile captioned by its id, with a change map (a changed corner)."""
    return [{"caption": f"buildings appeared in {tile_id}", "change_detected": True, "confidence": 0.5,
             "tile_id": tile_id, "change_map": CHANGE_MAP} for tile_id in tile_ids]


@pytest.fixture(scope="module")
def answering() -> Iterator[ScriptedBackend]:
    server = ScriptedBackend(captioned)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three dates of 128 px: 4 tiles of 64 px, 2 intervals each."""
    folder = tmp_path_factory.mktemp("series")
    first, second = scene_pair(SIZE, seed=1)
    third, _ = scene_pair(SIZE, seed=2)
    return [write_geotiff(folder / f"{year}.tif", image) for year, image in zip((2016, 2018, 2021), (first, second,
                                                                                                      third))]


def series_job(series: list[Path], output: Path, url: str) -> Job:
    return Job(rasters=tuple(RasterInput.from_source(str(path)) for path in series), output=str(output),
               backend_urls=(url,), tile_size=TILE, batch_size=2, retry_budget_s=0.0)


def stored_run(output: Path) -> dict[str, list[tuple]]:
    """The run's captions, histories and change areas, timestamps left out."""
    with sqlite3.connect(output) as connection:
        return {
            "captions": connection.execute('SELECT tile_id, "interval", status, caption, change_detected FROM captions '
                                           'ORDER BY tile_id, "interval"').fetchall(),
            "history": connection.execute("SELECT tile_id, timeline, changes, first_change, intervals, geom FROM "
                                          "history ORDER BY tile_id").fetchall(),
            "changes": connection.execute('SELECT tile_id, "interval", geom FROM changes ORDER BY tile_id, "interval"')
            .fetchall(),
        }


@pytest.mark.parametrize("kill_at", [1, 3, 5, 8])
def test_a_run_killed_anywhere_in_a_batch_resumes_to_the_file_of_an_uninterrupted_run(
    qgis_app, series: list[Path], answering: ScriptedBackend, tmp_path: Path, kill_at: int
) -> None:
    # Batches of one tile of three dates: its two captions (new features 1-2), two change areas (3-4), history (5).
    reference = tmp_path / "uninterrupted.gpkg"
    summary = run_job(series_job(series, reference, answering.url), Feedback())
    assert summary.error is None and summary.counts["captioned"] == 8, summary
    wanted = stored_run(reference)
    assert len(wanted["history"]) == 4 and len(wanted["changes"]) == 8
    output = tmp_path / "killed.gpkg"
    killed = subprocess.run([sys.executable, str(Path(__file__).with_name("killed_run.py")), str(kill_at),
                             str(output), answering.url, *map(str, series)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    summary = run_job(series_job(series, output, answering.url), Feedback())
    assert summary.error is None, summary.error
    assert stored_run(output) == wanted


def test_the_plan_of_a_resume_reads_a_file_a_killed_run_left(
    qgis_app, series: list[Path], answering: ScriptedBackend, tmp_path: Path
) -> None:
    output = tmp_path / "killed.gpkg"
    # Killed in the second batch, its pages in the file: the first tile is done, the journal is hot.
    killed = subprocess.run([sys.executable, str(Path(__file__).with_name("killed_run.py")), "6", str(output),
                             answering.url, *map(str, series)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = output.with_name(output.name + run_files.JOURNAL_SUFFIX)
    assert journal.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")  # hot: a commit's header
    plan = plan_job(series_job(series, output, answering.url))
    assert (plan.tiles, plan.already_done, plan.pairs) == (4, 1, 6)
    assert not journal.exists()


def test_processing_fails_when_tiles_failed_and_says_how_to_resume(
    qgis_iface, qgis_processing, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProcessingException

    from qgis_plugin import classFactory

    plugin = classFactory(qgis_iface)
    plugin.initGui()
    requests: list[list[str]] = []

    def first_only(tile_ids: list[str]) -> list[dict] | None:  # the first batch is captioned, the others fail
        requests.append(tile_ids)
        return captioned(tile_ids) if len(requests) == 1 else None

    failing = ScriptedBackend(first_only)
    output = tmp_path / "failed.gpkg"
    try:
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("ccexpert:captionchanges", {
                "LAYERS": [str(scene[0]), str(scene[1])], "DATES": "", "TILE_SIZE": TILE, "BATCH_SIZE": 1,
                "IN_FLIGHT": 1, "RETRY_BUDGET": 0, "BACKEND_URL": failing.url, "OUTPUT": str(output),
            })
    finally:
        failing.shutdown()
        plugin.unload()
    message = str(raised.value)
    # The command's failure policy: failed batches are kept as failed, and three in a row stop the run.
    assert "3 batches in a row failed" in message and "1 captioned, 3 failed" in message, message
    assert message.count("run again to resume") == 1, message
    with sqlite3.connect(output) as connection:
        assert dict(connection.execute("SELECT status, count(*) FROM captions GROUP BY status").fetchall()) == \
            {"captioned": 1, "failed": 3}
