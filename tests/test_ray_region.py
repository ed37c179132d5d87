"""``caption-region --ray`` on a real Ray cluster (a head node started by the module, 3 logical CPUs: two model
workers and a reader): the GeoPackage equals an in-process run's, a worker killed mid-run loses and repeats
nothing, a resumed run sends only the pending tiles, and what cannot work is said in one line before any tile is
sent (nobody at the address, a node whose Python lacks ccexpert, rasters a worker cannot open).

The model is the demo model (the default). The in-process reference runs torch on one thread, as Ray's CPU workers
do, so that the two runs' floating-point sums are the same and their outputs equal to the last bit.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import ccexpert_cli as cli
from ccexpert_core.defaults import default_model
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.captions_layer import CAPTIONED, read_tiles
from ccexpert_core.geo.engine import load_model_engine
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import RasterSeries
from ccexpert_core.geo.ray_runner import RayCaptioning, RayRegion
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import Reading, on_this_machine
from ccexpert_core.ray_cluster import RayCluster, WorkerPlan
from ccexpert_core.series import PAIR_INTERVALS

from geo_fixtures import write_pair
from ray_cluster import Cluster, start_cluster
from serve_process import server_env

CCEXPERT = Path(sys.executable).with_name("ccexpert")
TILES = 9  # a 192 px pair cut into 64 px tiles
OPTIONS = RegionOptions(tile_size=64, batch_size=2)
#: Columns that say when, not what: two runs of the same work differ there.
WHEN = {"fid", "created_at", "updated_at", "reviewed_at"}


def snapshot(out: Path) -> dict[str, list[tuple]]:
    """Every row of the captions and changes layers but their timestamps, in a fixed order."""
    connection = sqlite3.connect(out)
    try:
        layers = {}
        for layer in ("captions", "changes"):
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({layer})") if row[1] not in WHEN]
            quoted = ", ".join(f'"{name}"' for name in columns)
            layers[layer] = sorted(connection.execute(f"SELECT {quoted} FROM {layer}").fetchall(), key=repr)
        return layers
    finally:
        connection.close()


def in_process(before: Path, after: Path, out: Path, max_batches: int | None = None) -> None:
    """The reference: the same region with the demo model in this process, torch on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        caption_region(before, after, out, lambda: on_this_machine(load_model_engine(default_model())), OPTIONS,
                       log=lambda message: None, max_batches=max_batches)
    finally:
        torch.set_num_threads(threads)


def on_ray(cluster: Cluster, before: Path, after: Path, out: Path, trace: Path, workers: int = 2) -> None:
    """The same region on the cluster, through the library (so that the workers trace what they are given)."""
    region = RayRegion(cluster.address, workers, trace=trace)
    try:
        caption_region(
            before, after, out, lambda: region.open(default_model(), [("BEFORE", before), ("AFTER", after)]),
            OPTIONS, log=lambda message: None,
        )
    finally:
        region.close()


def traced(trace: Path, stage: str) -> list[dict]:
    return [line for line in map(json.loads, trace.read_text().splitlines()) if line["stage"] == stage]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node with 3 logical CPUs on this 2-core machine: two CPU workers (one CPU each) and a reader."""
    head = start_cluster(num_cpus=3)
    yield head
    head.stop()


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """BEFORE, AFTER and the in-process GeoPackage of their 9 tiles."""
    folder = tmp_path_factory.mktemp("region")
    before, after = write_pair(folder, size=192)
    reference = folder / "in-process.gpkg"
    in_process(before, after, reference)
    return before, after, reference


def test_region_on_ray_with_two_workers_equals_the_in_process_run(
    cluster: Cluster, region: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    before, after, reference = region
    out = tmp_path / "ray.gpkg"
    command = [str(CCEXPERT), "caption-region", "--before", str(before), "--after", str(after), "--out", str(out),
               "--tile-size", "64", "--batch-size", "2", "--ray", cluster.address, "--ray-workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=server_env(), cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "captioning on 2 workers (CPU)" in done.stderr and "Traceback" not in done.stderr
    assert f"{TILES} captioned" in done.stdout and "Ray: 2 workers (CPU) on 1 node" in done.stdout
    assert snapshot(out) == snapshot(reference)  # same ids, captions, statuses, confidences, change polygons, model_id
    assert len(snapshot(out)["captions"]) == TILES


def test_a_resumed_run_sends_only_the_pending_tiles_to_the_cluster_which_reads_them_in_tasks(
    cluster: Cluster, region: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    before, after, reference = region
    out, trace = tmp_path / "out.gpkg", tmp_path / "trace.jsonl"
    in_process(before, after, out, max_batches=2)  # 4 of the 9 tiles, by a local run
    done_first = {tile.tile_id for tile in read_tiles(out)}
    assert len(done_first) == 4
    on_ray(cluster, before, after, out, trace)  # a Ray run resumes a local run's output: the same model_id
    sent = [tile for line in traced(trace, "read") for tile in line["tiles"]]
    captioned = [tile for line in traced(trace, "caption") for tile in line["tiles"]]
    pending = {f"r{r}_c{c}" for r in range(3) for c in range(3)} - done_first
    assert sorted(sent) == sorted(captioned) == sorted(pending)  # each pending tile once, no finished one
    assert snapshot(out) == snapshot(reference)
    readers = {line["pid"] for line in traced(trace, "read")}
    workers = {line["pid"] for line in traced(trace, "caption")}
    assert not readers & workers and len(workers) <= 2  # read in Ray tasks, captioned by the two workers


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    cluster: Cluster, region: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    before, after, reference = region
    out, trace = tmp_path / "out.gpkg", tmp_path / "trace.jsonl"
    killed: list[dict] = []

    def kill_the_first_worker_that_starts_a_batch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            lines = traced(trace, "caption") if trace.exists() else []
            if lines:
                os.kill(lines[0]["pid"], signal.SIGKILL)  # a Ray worker process, in the middle of its batch
                killed.append(lines[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_worker_that_starts_a_batch, daemon=True)
    killer.start()
    on_ray(cluster, before, after, out, trace)
    killer.join(timeout=10)
    assert killed, "no worker was seen starting a batch"
    victim = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(victim["pid"], 0)
    ids = [tile.tile_id for tile in read_tiles(out)]
    assert len(ids) == len(set(ids)) == TILES
    assert all(tile.status == CAPTIONED for tile in read_tiles(out))
    assert snapshot(out) == snapshot(reference)
    # Ray sent the killed worker's batch again, to a new process.
    again = [line for line in traced(trace, "caption")[1:] if line["tiles"] == victim["tiles"]]
    assert again and all(line["pid"] != victim["pid"] for line in again)


def test_rasters_a_worker_cannot_open_are_said_in_one_line(
    cluster: Cluster, region: tuple[Path, Path, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    before, after, _ = region
    # /proc/self/cwd is each process's own folder: here it holds the rasters, on the cluster's workers it does not.
    monkeypatch.chdir(before.parent)
    seen_here = Path("/proc/self/cwd") / before.name, Path("/proc/self/cwd") / after.name
    code = cli.main(["caption-region", "--before", str(seen_here[0]), "--after", str(seen_here[1]),
                     "--out", str(tmp_path / "out.gpkg"), "--tile-size", "64", "--ray", cluster.address])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert f"cannot open BEFORE {seen_here[0]}" in line and "shared file system" in line
    assert not (tmp_path / "out.gpkg").exists()  # refused before the output was made

    # A node that joins later is not asked beforehand: its read task says the same.
    with RasterSeries(seen_here, log=lambda message: None) as pair:
        grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, 64)
        pair.fit_stretch(grid.tiles(), None)
        source = pair.source()
    with RayCluster(cluster.address):
        captioning = RayCaptioning("demo", None, WorkerPlan(1, 0.0), "the test cluster")
        with pytest.raises(CCExpertError, match="cannot open the rasters .*shared file system"):
            list(captioning.run(source, Reading(PAIR_INTERVALS, 0.5), [grid.tiles()[:2]]))


def test_an_address_nobody_listens_on_is_one_line(tmp_path: Path, capsys) -> None:
    before, after = write_pair(tmp_path, size=64)
    args = ["caption-region", "--before", str(before), "--after", str(after), "--out", str(tmp_path / "out.gpkg")]
    assert cli.main([*args, "--ray", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert "no Ray cluster answers at 127.0.0.1:9" in line and "ray start --head" in line and "Traceback" not in err
    assert cli.main([*args, "--ray", "http://head:6379"]) == 2
    assert "is not a Ray address" in capsys.readouterr().err
    assert cli.main([*args, "--ray-workers", "2"]) == 2
    assert "--ray-workers goes with --ray" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cluster_whose_python_lacks_ccexpert_is_one_line(region: tuple[Path, Path, Path], tmp_path: Path) -> None:
    before, after, _ = region
    # A Python with Ray (this environment's packages on its path) but without ccexpert: the editable install is a
    # .pth file, which Python only follows in its own site-packages.
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    site = next((bare / "lib").glob("python3*/site-packages"))
    (site / "packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run([str(bare / "bin" / "python"), "-c", "import ray, torch, ccexpert_core"],
                           capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "No module named 'ccexpert_core'" in check.stderr
    head = start_cluster(num_cpus=2, python=bare / "bin" / "python", cwd=tmp_path)
    try:
        command = [str(CCEXPERT), "caption-region", "--before", str(before), "--after", str(after),
                   "--out", str(tmp_path / "out.gpkg"), "--ray", head.address]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=server_env(), cwd=tmp_path,
                              check=False)
    finally:
        head.stop()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert "cannot import ccexpert_core" in line and "pip install 'ccexpert[ray]'" in line


def test_importing_ccexpert_core_never_imports_ray() -> None:
    code = ("import sys, ccexpert_core, ccexpert_cli.main, ccexpert_core.geo.region, ccexpert_core.geo.ray_runner; "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
