"""Kill and resume: ``caption-region`` on a three-date series, killed (SIGKILL) at every point where its writer
touches a batch, or stopped by a disk that fills at every page of the file, then run again with nothing in the
way: does every resume give the file an uninterrupted run gives?

    .venv/bin/python bench/kill_resume.py [--tiles-per-side 3] [--batch-size 2]

The run captions with the tests' stand-in engine (``tests/geo_fixtures.FakeEngine``: a caption from the pixels and
a change map per tile, so the ``changes`` layer is written too); everything else is the real command in a process
of its own. Where it is killed is chosen, never timed: the child wraps ``GeoPackage.extend_extent`` (called inside
every transaction that writes features: a batch's captions, each change area, each tile's history) and kills itself
right after its Nth call, before the transaction commits. Its SQLite page cache is kept small, so that a
transaction's pages reach the file before its commit as in a large batch: a kill then leaves a hot journal, the
state a kill during a commit leaves. A full disk is SQLite's own ``max_page_count``: past it, every write fails with
SQLITE_FULL ("database or disk is full"), the error a full disk gives, at that page; the second run has no limit
(the space freed).

Whole means: exit 0 on the resume, ``PRAGMA integrity_check`` ok, GDAL lists every layer (as ``ogrinfo`` and QGIS
see them: from ``gpkg_contents``), each layer's R-tree holds its features, and the captions, history and change
areas equal the uninterrupted run's. Prints one JSON object; copy the figures into bench/RESULTS.md.

Also the tests' way of killing the command at a chosen point (:func:`run_killed`) and of filling the disk
(:func:`limited_connect`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NotRequired, TypedDict
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
#: The stand-in engine's change map for every tile: a changed corner, so that each feature has a change area.
CHANGE_MAP = ((0.9, 0.9, 0.1, 0.1), (0.9, 0.9, 0.1, 0.1), (0.1, 0.1, 0.1, 0.1), (0.1, 0.1, 0.1, 0.1))
#: Pages of SQLite's cache in the killed child: small, so that a transaction spills to the file before it commits.
SMALL_CACHE_PAGES = 2
DATES = ("2016", "2018", "2021")
KILLED = -signal.SIGKILL
#: The child's last line: how many times it called extend_extent.
WRITES = "kill_resume: extend_extent calls:"


class Contents(TypedDict):
    """What :func:`contents` reads of a run's GeoPackage."""

    integrity: str
    gdal_layers: list[str]
    tables: list[str]
    #: Each layer's feature count and its R-tree's entries (None: no R-tree).
    indexed: dict[str, tuple[int, int | None]]
    captions: list[tuple]
    history: list[tuple]
    changes: list[tuple]


#: What of :class:`Contents` must equal an uninterrupted run's.
COMPARED: tuple[Literal["captions", "history", "changes", "tables", "gdal_layers"], ...] = (
    "captions", "history", "changes", "tables", "gdal_layers",
)


class Kills(TypedDict):
    """The runs killed at every write point, and how many resumed whole."""

    points: int
    killed: int
    hot_journal: int
    whole: int
    not_whole: list[dict[str, object]]
    seconds: NotRequired[float]


class DiskFull(TypedDict):
    """The runs stopped by a disk full at every page, their first exits, and how many resumed whole."""

    pages: int
    stopped: int
    first_exits: dict[int, int]
    whole: int
    not_whole: list[dict[str, object]]
    seconds: NotRequired[float]


class Probe(TypedDict):
    """What :func:`probe` found (and :func:`main` prints, with the machine)."""

    tiles: int
    dates: int
    batch_size: int
    kills: Kills
    disk_full: DiskFull
    machine: NotRequired[str]


def limited_connect(max_pages: int | None = None, cache_pages: int | None = None) -> Callable[..., sqlite3.Connection]:
    """``sqlite3.connect`` whose connections have at most ``max_pages`` pages in their file (a disk that is full
    past them: SQLITE_FULL) and a cache of ``cache_pages`` pages (installed in place of ``sqlite3.connect``)."""
    connect = sqlite3.connect

    def limited(*args, **kwargs) -> sqlite3.Connection:  # noqa: ANN002, ANN003 (sqlite3.connect's own)
        connection = connect(*args, **kwargs)
        if cache_pages is not None:
            connection.execute(f"PRAGMA cache_size = {int(cache_pages)}")
        if max_pages is not None:
            connection.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        return connection

    return limited


def _child(kill_at: int, max_pages: int | None, argv: list[str]) -> int:
    """The command, with the stand-in engine, killed right after the ``kill_at``th ``extend_extent`` (0: never)."""
    import ccexpert_cli as cli
    from ccexpert_core.geo import engine
    from ccexpert_core.geo.gpkg import GeoPackage

    sys.path.insert(0, str(REPO / "tests"))
    from geo_fixtures import FakeEngine

    extend_extent, calls = GeoPackage.extend_extent, [0]

    def extend_then_die(package: GeoPackage, name: str, bounds: tuple[float, float, float, float]) -> None:
        extend_extent(package, name, bounds)
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # The stand-ins in place of the model, the disk and the writer's extent update (patched as tests patch).
    with (
        mock.patch.object(engine, "load_model_engine", lambda *args: FakeEngine(change_map=CHANGE_MAP)),
        mock.patch.object(sqlite3, "connect", limited_connect(max_pages, SMALL_CACHE_PAGES if kill_at else None)),
        mock.patch.object(GeoPackage, "extend_extent", extend_then_die),
    ):
        code = cli.main(["caption-region", *argv])
    print(f"{WRITES} {calls[0]}", file=sys.stderr)
    return code


def run_killed(argv: list[str], kill_at: int = 0, max_pages: int | None = None) -> subprocess.CompletedProcess:
    """``caption-region ARGV`` in a process of its own with the stand-in engine, killed (SIGKILL) right after its
    ``kill_at``th ``extend_extent`` when it gets there (0: never), on a disk full past ``max_pages`` pages."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(kill_at), str(max_pages or 0), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


def series_args(folder: Path, out: Path, tiles_per_side: int = 2, batch_size: int = 2) -> list[str]:
    """A three-date series of ``tiles_per_side``² tiles of 48 px (written under ``folder`` once) into ``out``."""
    from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff

    sys.path.insert(0, str(REPO / "tests"))
    from geo_fixtures import CRS, utm_transform

    size = 48 * tiles_per_side
    paths = [folder / f"{date}.tif" for date in DATES]
    if not all(path.is_file() for path in paths):
        first, second = synthetic_pair(size, 3)
        third, _ = synthetic_pair(size, 4)
        for path, image in zip(paths, (first, second, third)):
            write_geotiff(path, image, CRS, utm_transform())
    dated = [part for date, path in zip(DATES, paths) for part in ("--date", f"{date}={path}")]
    return [*dated, "--out", str(out), "--tile-size", "48", "--batch-size", str(batch_size)]


def hot_journal(out: Path) -> bool:
    """Whether ``out`` has a journal SQLite must roll back (its header written, as a commit under way leaves it)."""
    journal = out.with_name(out.name + "-journal")
    return journal.is_file() and journal.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")


def contents(out: Path) -> Contents:
    """What a run's GeoPackage says, timestamps left out: its features, history and change areas, the layers GDAL
    lists, each layer's R-tree size against its features, and SQLite's integrity check."""
    import pyogrio

    with sqlite3.connect(f"file:{out}?mode=ro", uri=True) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

        def rows(query: str, table: str) -> list[tuple]:
            return connection.execute(query).fetchall() if table in tables else []

        layers = [name for name in ("captions", "history", "changes") if name in tables]
        indexed = {name: (connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0],
                          connection.execute(f"SELECT count(*) FROM rtree_{name}_geom").fetchone()[0]
                          if f"rtree_{name}_geom" in tables else None) for name in layers}
        return Contents({
            "integrity": connection.execute("PRAGMA integrity_check").fetchone()[0],
            "gdal_layers": sorted(str(name) for name, _ in pyogrio.list_layers(out)),
            "tables": layers,
            "indexed": indexed,
            "captions": rows('SELECT tile_id, "interval", status, caption, change_detected, date_before, date_after '
                             'FROM captions ORDER BY tile_id, "interval"', "captions"),
            "history": rows("SELECT tile_id, timeline, changes, first_change, intervals, geom FROM history "
                            "ORDER BY tile_id", "history"),
            "changes": rows('SELECT tile_id, "interval", geom FROM changes ORDER BY tile_id, "interval"', "changes"),
        })


def differences(got: Contents, wanted: Contents) -> list[str]:
    """What of ``got`` is not as an uninterrupted run leaves it (empty: whole)."""
    found: list[str] = [key for key in COMPARED if got[key] != wanted[key]]
    if got["integrity"] != "ok":
        found.append(f"integrity {got['integrity']}")
    found += [f"R-tree of {name}" for name, (features, index) in got["indexed"].items() if features != index]
    return found


def probe(folder: Path, tiles_per_side: int, batch_size: int) -> Probe:
    """Kill at every write point and fill the disk at every page, resume each, count the whole ones."""
    reference = folder / "reference.gpkg"
    uninterrupted = run_killed(series_args(folder, reference, tiles_per_side, batch_size))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    wanted = contents(reference)
    # Every extend_extent call of an uninterrupted run is a point to kill at.
    points = int(uninterrupted.stderr.strip().splitlines()[-1].removeprefix(WRITES))
    kills = Kills(points=points, killed=0, hot_journal=0, whole=0, not_whole=[])
    started = time.monotonic()
    for at in range(1, points + 1):
        out = folder / f"killed_{at}.gpkg"
        first = run_killed(series_args(folder, out, tiles_per_side, batch_size), at)
        kills["killed"] += first.returncode == KILLED
        kills["hot_journal"] += hot_journal(out)
        second = run_killed(series_args(folder, out, tiles_per_side, batch_size))
        found = [f"exit {second.returncode}: {second.stderr.strip()[-300:]}"] if second.returncode else []
        found = found or differences(contents(out), wanted)
        kills["whole"] += not found
        if found:
            kills["not_whole"].append({"kill_at": at, "found": found})
    kills["seconds"] = round(time.monotonic() - started, 1)
    pages = reference.stat().st_size // 4096
    full = DiskFull(pages=pages, stopped=0, first_exits={}, whole=0, not_whole=[])
    started = time.monotonic()
    for limit in range(1, pages + 1):
        out = folder / f"full_{limit}.gpkg"
        first = run_killed(series_args(folder, out, tiles_per_side, batch_size), max_pages=limit)
        full["stopped"] += first.returncode != 0
        full["first_exits"][first.returncode] = full["first_exits"].get(first.returncode, 0) + 1
        second = run_killed(series_args(folder, out, tiles_per_side, batch_size))
        found = [f"exit {second.returncode}: {second.stderr.strip()[-300:]}"] if second.returncode else []
        found = found or differences(contents(out), wanted)
        full["whole"] += not found
        if found:
            full["not_whole"].append({"max_pages": limit, "first_exit": first.returncode, "found": found})
    full["seconds"] = round(time.monotonic() - started, 1)
    return Probe(tiles=tiles_per_side ** 2, dates=len(DATES), batch_size=batch_size, kills=kills, disk_full=full)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kill_at, max_pages, *argv = sys.argv[2:]
        sys.exit(_child(int(kill_at), int(max_pages) or None, argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles-per-side", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2, help="tiles per batch (each brings two pairs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = probe(Path(folder), args.tiles_per_side, args.batch_size)
    result["machine"] = f"{os.cpu_count()} cores, no GPU"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
