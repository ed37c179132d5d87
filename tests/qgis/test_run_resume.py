"""The plugin's run keeps the command's promises about its output: the lock follows the file (a symlink, another
spelling or a hard link to a GeoPackage a run holds is refused; a file of several names is never written)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from qgis_plugin.job import Job, RasterInput, run_job
from qgis_plugin.shared_modules import run_files

from conftest import Feedback
from rasters import write_pair
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
