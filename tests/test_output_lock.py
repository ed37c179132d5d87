"""The output lock follows the file, not the name given: while a run holds a GeoPackage, a second run is refused
through a symlink, another spelling or a hard link; a file with several names (hard links) is never written, since
SQLite looks for a stopped run's journal only under the name it is opened by."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ccexpert_cli as cli
from ccexpert_core.geo.run_files import LOCK_SUFFIX, OutputBusy, OutputLock

from geo_fixtures import FakeEngine, write_pair


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr("ccexpert_core.geo.engine.load_model_engine", lambda *a: fake)
    return fake


@pytest.fixture()
def done(tmp_path: Path, engine: FakeEngine, capsys) -> tuple[list[str], Path]:
    """A finished two-date run: (the command's arguments but --out, its GeoPackage)."""
    before, after = write_pair(tmp_path, size=96)
    args = ["--before", str(before), "--after", str(after), "--tile-size", "48"]
    out = tmp_path / "out.gpkg"
    assert cli.main(["caption-region", *args, "--out", str(out)]) == 0
    engine.calls.clear()
    capsys.readouterr()
    return args, out


def caption_region(capsys: pytest.CaptureFixture, args: list[str], out: Path) -> tuple[int, str]:
    code = cli.main(["caption-region", *args, "--out", str(out)])
    return code, capsys.readouterr().err


def other_names(out: Path) -> dict[str, Path]:
    """Three other paths to ``out``: a symlink, a symlink to its folder, and a spelling through ``..``."""
    folder = out.parent
    (folder / "sub").mkdir()
    (folder / "link.gpkg").symlink_to(out)
    (folder / "folder-link").symlink_to(folder, target_is_directory=True)
    return {"symlink": folder / "link.gpkg", "folder symlink": folder / "folder-link" / out.name,
            "spelling": folder / "sub" / ".." / out.name}


def test_a_second_run_through_another_path_to_the_file_is_refused(tmp_path: Path, capsys, engine, done) -> None:
    args, out = done
    paths = other_names(out)
    with OutputLock(out, "ccexpert caption-region (the first run)"):
        for how, path in paths.items():
            code, err = caption_region(capsys, args, path)
            assert code == 2, (how, err)
            assert "is being written by another run (ccexpert caption-region (the first run)" in err, (how, err)
            assert len(err.strip().splitlines()) == 1 and engine.calls == [], (how, err)
    # Released: the same paths resume the file, with nothing left to do.
    for how, path in paths.items():
        code, err = caption_region(capsys, args, path)
        assert code == 0 and "4 already in" in err and "0 to do" in err, (how, err)
    assert not list(tmp_path.glob(f"*{LOCK_SUFFIX}"))


def test_a_symlinked_output_locks_the_real_file(tmp_path: Path) -> None:
    real = tmp_path / "real.gpkg"
    link = tmp_path / "link.gpkg"
    link.symlink_to(real)  # the file need not exist yet: the first run creates it through the link
    with OutputLock(link, "first"):
        assert (tmp_path / f"real.gpkg{LOCK_SUFFIX}").exists() and not (tmp_path / f"link.gpkg{LOCK_SUFFIX}").exists()
        with pytest.raises(OutputBusy, match="being written by another run"):
            OutputLock(real).acquire()
    with OutputLock(real):
        with pytest.raises(OutputBusy):
            OutputLock(link).acquire()


def test_a_hard_linked_output_is_refused_whoever_holds_it(tmp_path: Path, capsys, engine, done) -> None:
    args, out = done
    hard = tmp_path / "hard.gpkg"
    before = out.read_bytes()
    with OutputLock(out, "ccexpert caption-region (the first run)"):
        os.link(out, hard)  # a second name made while the first run writes
        code, err = caption_region(capsys, args, hard)
        assert code == 2 and "has 2 names (hard links)" in err and len(err.strip().splitlines()) == 1, err
    for path in (hard, out):  # no run holds it: still refused, by either name
        code, err = caption_region(capsys, args, path)
        assert code == 2 and "has 2 names (hard links)" in err and "copy" in err, err
    assert engine.calls == [] and out.read_bytes() == before
    assert not list(tmp_path.glob(f"*{LOCK_SUFFIX}"))
    hard.unlink()  # one name again: runs go ahead
    assert caption_region(capsys, args, out)[0] == 0
