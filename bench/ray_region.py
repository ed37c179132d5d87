"""Regions on Ray: tiles/s with 1 and 2 Ray Data workers, and 1 worker against the same region in-process (what
Ray itself costs), with the demo model on this machine's CPUs.

Run: .venv/bin/python bench/ray_region.py [--size 768] [--tile-size 64] [--batch-size 8] [--repeats 2]

A synthetic 8-bit pair cut into tiles of ``--tile-size`` px (each resized to the model's 384 px, as any tile is),
demo model. Ray is started once, on this machine, with 3 logical CPUs (two CPU workers of one CPU each and a
reader; on 2 cores they share the cores). Each run writes a fresh GeoPackage. Two figures per run:

- end to end: tiles / the whole ``caption_region`` call (Ray: connecting, starting the workers and loading a model in
  each, as a user waits for it);
- steady: tiles after the first batch / the time from the first batch written to the last (the workers running).

In-process is measured twice: torch on the machine's threads (what ``caption-region`` does), and on one thread (what
one CPU worker of Ray gets), the fair baseline for the cost of Ray itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from affine import Affine

from ccexpert_core.defaults import default_model
from ccexpert_core.geo.engine import load_model_engine
from ccexpert_core.geo.ray_runner import RayRegion
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.geo.sources import RasterLocation
from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff
from ccexpert_core.ray_cluster import prepare_ray

CRS = "EPSG:32631"


def write_region(folder: Path, size: int) -> tuple[Path, Path]:
    """A synthetic 8-bit RGB pair of ``size`` px a side."""
    first, second = synthetic_pair(size, seed=size)
    transform = Affine(0.5, 0, 431000, 0, -0.5, 4829000)
    return (write_geotiff(folder / "before.tif", first, CRS, transform),
            write_geotiff(folder / "after.tif", second, CRS, transform))


def quiet(message: str) -> None:
    """Runs say nothing: the figures are the output."""


def timed(run: Callable[[Callable[[int, int], None]], None]) -> tuple[float, float, int]:
    """(end-to-end s, steady s, tiles after the first batch) of ``run(progress)``."""
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    run(lambda done, total: marks.append((time.perf_counter(), done)))
    end = time.perf_counter()
    written = [(t, done) for t, done in marks if done > 0]
    (first_t, first_done), (last_t, last_done) = written[0], written[-1]
    return end - start, last_t - first_t, last_done - first_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    options = RegionOptions(tile_size=args.tile_size, batch_size=args.batch_size)
    folder = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    before, after = write_region(folder, args.size)
    tiles = (args.size // args.tile_size) ** 2
    def quiet(message: str) -> None:
        pass

    prepare_ray()
    import ray
    import torch

    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    results: dict[str, list[tuple[float, float, int]]] = {}
    counter = iter(range(10_000))

    def out() -> Path:
        return folder / f"run{next(counter)}.gpkg"

    def in_process(threads: int) -> Callable[[Callable[[int, int], None]], None]:
        def run(progress: Callable[[int, int], None]) -> None:
            before_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                caption_region(before, after, out(), lambda: on_this_machine(load_model_engine(default_model(), "cpu")),
                               options, log=quiet, progress=progress)
            finally:
                torch.set_num_threads(before_threads)
        return run

    def on_ray(workers: int) -> Callable[[Callable[[int, int], None]], None]:
        def run(progress: Callable[[int, int], None]) -> None:
            region = RayRegion("local", workers, 0.0, log=quiet)  # the session started above
            caption_region(before, after, out(),
                           lambda: region.open(default_model(), [("BEFORE", RasterLocation.of(before)),
                                                                 ("AFTER", RasterLocation.of(after))]),
                           options, log=quiet, progress=progress)
        return run

    runs = {
        f"in-process, {torch.get_num_threads()} threads": in_process(torch.get_num_threads()),
        "in-process, 1 thread": in_process(1),
        "Ray, 1 worker": on_ray(1),
        "Ray, 2 workers": on_ray(2),
    }
    try:
        for _ in range(args.repeats):
            for name, run in runs.items():
                results.setdefault(name, []).append(timed(run))
    finally:
        ray.shutdown()
    print(f"{time.strftime('%a %b %d %H:%M UTC %Y', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {tiles} tiles of {args.tile_size} px, batch {args.batch_size}, "
          f"demo model, {args.repeats} runs each (median)")
    print("| run | end to end, tiles/s | steady, tiles/s | each run (end to end / steady) |")
    print("| --- | ---: | ---: | --- |")
    for name, figures in results.items():
        ends = [tiles / total for total, _, _ in figures]
        steady = [done / span for _, span, done in figures if span > 0]
        each = ", ".join(f"{e:.2f} / {s:.2f}" for e, s in zip(ends, steady))
        print(f"| {name} | {statistics.median(ends):.2f} | {statistics.median(steady):.2f} | {each} |")


if __name__ == "__main__":
    main()
