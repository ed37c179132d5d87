"""Saturation: does ``ccexpert caption-region --backend`` keep a GPU busy?

Against the stand-in GPU backend (bench/standin_backend.py: sleeps a fixed time per model batch of up to N pairs and
spends almost no CPU, as a GPU would), the CLI's tiles/s as a share of the stand-in's capacity; against one that
answers at once, the client's own ceiling; and where a tile's time goes on the client. Optionally the real backend
with the demo model (on this machine it shares the CPU with the client, so the share is only indicative).

Run: .venv/bin/python bench/region_saturation.py [--tiles 100] [--repeats 3] [--code DIR] [--real-backend N]

``--code DIR`` runs the command from another checkout (e.g. ``git worktree add /tmp/before <commit>``), to measure
a "before". The region is a synthetic 8-bit RGB GeoTIFF pair of 384 px tiles at 0.5 m. Each figure is the median
of ``--repeats`` runs; a run's fixed start-up (reading the rasters' headers, checking the output) is measured by a
resume of the finished output and subtracted.
"""

from __future__ import annotations

import argparse
import json
import math
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STANDIN = HERE / "standin_backend.py"
TILE = 384


def write_region(folder: Path, tiles: int) -> tuple[Path, Path]:
    """A square-ish synthetic pair holding about ``tiles`` tiles."""
    from ccexpert_core.geo.synthetic import synthetic_pair, write_geotiff

    side = math.ceil(math.sqrt(tiles)) * TILE
    first, second = synthetic_pair(side, seed=3)
    transform = Affine(0.5, 0, 431000, 0, -0.5, 4829000)
    return (write_geotiff(folder / "before.tif", first.transpose(2, 0, 1), "EPSG:32631", transform),
            write_geotiff(folder / "after.tif", second.transpose(2, 0, 1), "EPSG:32631", transform))


def start_standin(batch_s: float, max_batch: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--batch-s", str(batch_s), "--max-batch", str(max_batch)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None  # stdout=PIPE
    port = process.stdout.readline().split()[1]
    return process, f"http://127.0.0.1:{port}"


def run_command(code: Path, args: list[str]) -> float:
    """Seconds the command takes (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ccexpert_cli", "caption-region", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code)
    return time.perf_counter() - start


def tiles_per_second(code: Path, before: Path, after: Path, folder: Path, url: str, repeats: int,
                     tiles: int) -> list[float]:
    rates = []
    for index in range(repeats):
        out = folder / f"out-{index}.gpkg"
        args = ["--before", str(before), "--after", str(after), "--out", str(out), "--backend", url]
        full = run_command(code, args)
        fixed = run_command(code, args)  # a resume with nothing left to do: start-up and checks only
        rates.append(tiles / max(1e-6, full - fixed))
        out.unlink()
    return rates


def cost_split(before: Path, after: Path, url: str, sample: int = 48) -> dict[str, float]:
    """Milliseconds per tile of each step of the client, one after the other on one thread (this checkout)."""
    from ccexpert_core.client import BackendClient, encode_array
    from ccexpert_core.geo.captions_layer import CaptionsLayer, TileRecord
    from ccexpert_core.geo.grid import TileGrid
    from ccexpert_core.geo.raster import RasterSeries, spatial_ref

    with RasterSeries([before, after], log=lambda m: None) as pair:
        grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, TILE)
        tiles = grid.tiles()[:sample]
        pair.fit_stretch(tiles, None)
        pair.read_dates(tiles[0])
        start = time.perf_counter()
        pixels = [[rgb for rgb, _ in pair.read_dates(tile)] for tile in tiles]
        read = time.perf_counter() - start
        client = BackendClient(url, retries=0)
        client.info()
        timings = {"read + align + 8-bit": read}
        for name, compress in (("encode (TIFF, loopback)", False), ("encode (PNG level 1)", True)):
            start = time.perf_counter()
            encoded = [(encode_array(b, compress), encode_array(a, compress)) for b, a in pixels]
            timings[name] = time.perf_counter() - start
        encoded = [(encode_array(b, False), encode_array(a, False)) for b, a in pixels]
        start = time.perf_counter()
        results = []
        for i in range(0, len(encoded), 8):
            results += client.caption_encoded(encoded[i : i + 8], [t.tile_id for t in tiles[i : i + 8]])
        timings["HTTP + parse (batches of 8)"] = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            options = {"key": "value"}
            with CaptionsLayer(Path(tmp) / "o.gpkg", spatial_ref(pair.grid.crs), options, "b", "a", "m") as layer:
                records = [TileRecord(t, grid.footprint(t), "captioned", r.caption, r.change_detected, r.confidence)
                           for t, r in zip(tiles, results)]
                start = time.perf_counter()
                for i in range(0, len(records), 8):
                    layer.write(records[i : i + 8])
                timings["GeoPackage write (batches of 8)"] = time.perf_counter() - start
    return {name: round(1000 * seconds / len(tiles), 2) for name, seconds in timings.items()}


def real_backend(code: Path, before: Path, after: Path, folder: Path, tiles: int) -> dict:
    """The CLI against ``ccexpert serve`` with the demo model, and that backend's own pairs/s fed by an ideal client
    (pre-encoded requests, four open at once) over the same tiles."""
    from concurrent.futures import ThreadPoolExecutor

    from ccexpert_core.client import BackendClient, encode_array
    from ccexpert_core.geo.grid import TileGrid
    from ccexpert_core.geo.raster import RasterSeries

    sys.path.insert(0, str(REPO / "tests"))
    from serve_process import start_serve

    server = start_serve(Path(sys.executable).with_name("ccexpert"), ["--no-ui"], folder / "serve.log")
    try:
        with RasterSeries([before, after], log=lambda m: None) as pair:
            grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, TILE)
            chosen = grid.tiles()[:tiles]
            pair.fit_stretch(grid.tiles(), None)
            encoded: list[tuple[bytes, bytes]] = []
            for tile in chosen:
                (before_rgb, _), (after_rgb, _) = pair.read_dates(tile)  # a pair: two dates
                encoded.append((encode_array(before_rgb, False), encode_array(after_rgb, False)))
        client = BackendClient(server.url)
        client.info()
        batches = [encoded[i : i + 8] for i in range(0, len(encoded), 8)]
        client.caption_encoded(batches[0])  # the model's first batch is slow (allocations): not part of its pace
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client.caption_encoded, batches))
        capacity = len(encoded) / (time.perf_counter() - start)
        side = math.ceil(math.sqrt(tiles)) * TILE
        bounds = f"431000,{4829000 - side * 0.5},{431000 + side * 0.5},4829000"
        out = folder / "real.gpkg"
        args = ["--before", str(before), "--after", str(after), "--out", str(out), "--backend", server.url,
                "--bounds", bounds]
        full, fixed = run_command(code, args), run_command(code, args)
        rate = len(chosen) / max(1e-6, full - fixed)
    finally:
        server.stop()
    return {"tiles": len(chosen), "backend_alone_pairs_per_s": round(capacity, 2), "cli_tiles_per_s": round(rate, 2),
            "share": round(rate / capacity, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose command is measured")
    parser.add_argument("--real-backend", type=int, metavar="N", help="also N tiles against ccexpert serve (demo model)")
    args = parser.parse_args()
    report: dict = {"machine": f"{os.cpu_count()}-core {platform.machine()}", "code": str(args.code),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before, after = write_region(folder, args.tiles)
        tiles = math.ceil(math.sqrt(args.tiles)) ** 2
        report["tiles"] = tiles
        for name, batch_s, max_batch in (("32 pairs/s stand-in", 0.5, 16), ("stand-in answering at once", 0.0, 16)):
            process, url = start_standin(batch_s, max_batch)
            try:
                rates = tiles_per_second(args.code, before, after, folder, url, args.repeats, tiles)
                entry = {"tiles_per_s": round(statistics.median(rates), 1), "all": [round(r, 1) for r in rates]}
                if batch_s:
                    entry["share_of_capacity"] = round(statistics.median(rates) / (max_batch / batch_s), 3)
                report[name] = entry
                if not batch_s and args.code == REPO:
                    report["client ms per tile, one thread"] = cost_split(before, after, url)
            finally:
                process.kill()
                process.wait()
        if args.real_backend:
            report["real backend (demo model, same CPU)"] = real_backend(args.code, before, after, folder,
                                                                         args.real_backend)
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
