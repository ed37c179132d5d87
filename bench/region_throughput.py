"""Region throughput: ``caption_region`` against the Captioner alone on the same tiles, and peak memory for a
region and one about 10× larger.

Run: .venv/bin/python bench/region_throughput.py [--tokens 8] [--batch-size 8] [--repeats 3]

The rasters are synthetic 16-bit 4-band GeoTIFFs (so the stretch and band choice run too), 384 px tiles, the
tiny preset with random weights. ``--tokens`` caps the caption length for both sides alike, to keep the run short.
Each peak-memory run is its own process (``--peak-memory DIR``), so that one run's peak does not hide another's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from affine import Affine

from ccexpert_core.captions import CaptionResult
from ccexpert_core.geo.engine import CaptionEngine, Engine, InProcessEngine
from ccexpert_core.geo.grid import TileGrid
from ccexpert_core.geo.raster import RasterSeries
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff

SMALL = 1536  # 16 tiles of 384 px
LARGE = 4864  # 10.03× the small region's area: 169 tiles
CRS = "EPSG:32631"


def write_region(folder: Path, size: int) -> tuple[Path, Path]:
    """A 16-bit 4-band pair of ``size`` px a side (the synthetic scene scaled to 12 bits, plus a fourth band)."""
    first, second = synthetic_pair(size, seed=size)
    transform = Affine(0.5, 0, 431000, 0, -0.5, 4829000)
    paths = []
    for name, rgb in (("before", first), ("after", second)):
        bands = rgb.transpose(2, 0, 1).astype(np.uint16) * 16
        data = np.concatenate([bands, bands[:1] // 2 + 100])
        paths.append(write_geotiff(folder / f"{name}.tif", data, CRS, transform))
    return paths[0], paths[1]


def load_engine(tokens: int) -> InProcessEngine:
    from ccexpert_core.inference.captioner import Captioner

    captioner = Captioner.load("preset:tiny", device="cpu")
    captioner.max_new_tokens = tokens
    return InProcessEngine(captioner)


def time_region(before: Path, after: Path, out: Path, engine: CaptionEngine, batch_size: int) -> tuple[int, float]:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    summary = caption_region(before, after, out, lambda: on_this_machine(engine), RegionOptions(batch_size=batch_size),
                             log=lambda m: None)
    return summary.tiles, time.perf_counter() - start


def time_captioner_alone(before: Path, after: Path, engine: InProcessEngine, batch_size: int) -> tuple[int, float]:
    """The same tiles, read beforehand, captioned in batches of the same size."""
    with RasterSeries([before, after], log=lambda m: None) as pair:
        tiles = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, 384).tiles()
        pair.fit_stretch(tiles, None)
        pairs = []
        for tile in tiles:
            (before_rgb, _), (after_rgb, _) = pair.read_dates(tile)  # a pair: two dates
            pairs.append((before_rgb, after_rgb))
    start = time.perf_counter()
    engine.captioner.caption(pairs, batch_size=batch_size)
    return len(pairs), time.perf_counter() - start


class NullEngine(Engine):
    """Answers at once: what is left of a region run is the pipeline's own work (read, map, thumbnails, write)."""

    model_id = "null"

    def caption(self, pairs, tile_ids):
        return [CaptionResult.from_caption("there is no difference", 1.0) for _ in pairs]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory_run(folder: Path, tokens: int, batch_size: int) -> None:
    """One region run in this process; prints tiles, seconds, resident memory once the model is loaded and the
    peak during the run (the peak is reset after loading: Linux's clear_refs) as JSON."""
    engine = load_engine(tokens)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, so that the peak is the region run's own
    loaded_mb = _status_kb("VmRSS") / 1024
    tiles, seconds = time_region(folder / "before.tif", folder / "after.tif", folder / "out.gpkg", engine, batch_size)
    peak_mb = _status_kb("VmHWM") / 1024
    print(json.dumps({"tiles": tiles, "seconds": seconds, "model_loaded_mb": loaded_mb, "peak_mb": peak_mb,
                      "growth_mb": peak_mb - loaded_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8, help="max new tokens per caption (both sides)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-memory", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory is not None:
        peak_memory_run(args.peak_memory, args.tokens, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / name for name in ("small", "large")}
        for name, size in (("small", SMALL), ("large", LARGE)):
            write_region(folders[name], size)
        small = folders["small"]
        engine = load_engine(args.tokens)
        time_captioner_alone(small / "before.tif", small / "after.tif", engine, args.batch_size)  # warm-up
        region_rates, alone_rates = [], []
        for _ in range(args.repeats):  # alternated, so that a change in the machine's load hits both alike
            tiles, seconds = time_captioner_alone(small / "before.tif", small / "after.tif", engine, args.batch_size)
            alone_rates.append(tiles / seconds)
            tiles, seconds = time_region(small / "before.tif", small / "after.tif", small / "out.gpkg", engine,
                                         args.batch_size)
            region_rates.append(tiles / seconds)
        tiles, seconds = time_region(small / "before.tif", small / "after.tif", small / "out.gpkg", NullEngine(),
                                     args.batch_size)
        pipeline_ms = 1000 * seconds / tiles
        memory = {}
        for name, folder in folders.items():
            command = [sys.executable, __file__, "--peak-memory", str(folder), "--tokens", str(args.tokens),
                       "--batch-size", str(args.batch_size)]
            memory[name] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    alone, region = statistics.median(alone_rates), statistics.median(region_rates)
    print(json.dumps({
        "machine": platform.processor() or platform.machine(),
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "small_tiles_per_s": {"captioner_alone": round(alone, 3), "region": round(region, 3),
                              "all_alone": [round(r, 3) for r in alone_rates],
                              "all_region": [round(r, 3) for r in region_rates]},
        "ratio_region_to_alone": round(region / alone, 3),
        "pipeline_alone_ms_per_tile": round(pipeline_ms, 1),
        "inference_alone_ms_per_tile": round(1000 / alone, 1),
        "peak_memory": {name: {k: round(v, 1) for k, v in run.items()} for name, run in memory.items()},
        "peak_ratio_large_to_small": round(memory["large"]["peak_mb"] / memory["small"]["peak_mb"], 3),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }, indent=2))


if __name__ == "__main__":
    main()
