"""Remote imagery: does ``ccexpert caption-region`` read COGs over HTTP as fast as the same files on disk?

The region is a synthetic 8-bit RGB pair of 384 px tiles, written as COGs tiled at the run's tile size (384 px
blocks, DEFLATE, overviews). The command runs with default options against the stand-in GPU backend
(bench/standin_backend.py: 0.5 s per model batch of up to 16 pairs, capacity 32 pairs/s) and against the stand-in
answering at once (the client's own ceiling), reading the COGs from disk and over loopback HTTP from
bench/range_server.py, which answers range requests after an injected latency per request (``--latency-ms``, a
distant bucket) and counts them. Figures: tiles/s (tiles / (run − a resume of the finished output, i.e. start-up)),
its share of the local run's, and requests per tile and date (the run's requests to the server / tiles / 2).

Then where the requests come from: the same tiles read in this process once tile by tile and once as a run reads
them (the tiles of a row side by side in one window per date), with the requests and seconds each takes.

Run: .venv/bin/python bench/remote_imagery.py [--tiles 400] [--repeats 3] [--latency-ms 50]
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
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from region_saturation import TILE, run_command, start_standin, write_region  # noqa: E402

SERVER = HERE / "range_server.py"
#: The stand-in GPU (seconds per model batch, pairs per batch) and the stand-in answering at once.
STANDINS = {"32 pairs/s stand-in": (0.5, 16), "stand-in answering at once": (0.0, 16)}


def write_cogs(folder: Path, tiles: int) -> tuple[Path, Path]:
    """The region's pair as COGs tiled at the run's tile size."""
    import rasterio.shutil

    plain = folder / "plain"
    plain.mkdir()
    cogs = folder / "cogs"
    cogs.mkdir()
    written = []
    for path in write_region(plain, tiles):
        target = cogs / path.name
        rasterio.shutil.copy(path, target, driver="COG", blocksize=TILE, compress="DEFLATE")
        written.append(target)
    return written[0], written[1]


class Server:
    """bench/range_server.py serving the COGs with a latency per request."""

    def __init__(self, folder: Path, latency_ms: float) -> None:
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(folder), "--latency-ms", str(latency_ms)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{self.process.stdout.readline().split()[1]}"

    def requests(self) -> int:
        with urllib.request.urlopen(f"{self.url}/_control/stats", timeout=30) as response:
            return json.load(response)["requests"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def run_rates(inputs: tuple[str, str], url: str, folder: Path, tiles: int, repeats: int,
              server: Server | None) -> dict:
    """Tiles/s of ``repeats`` runs (median first) and, for a served pair, requests per tile and date."""
    rates, per_tile = [], []
    for index in range(repeats):
        out = folder / f"out-{index}.gpkg"
        args = ["--before", inputs[0], "--after", inputs[1], "--out", str(out), "--backend", url]
        before = server.requests() if server else 0
        full = run_command(REPO, args)
        during = server.requests() - before if server else 0
        fixed = run_command(REPO, args)  # a resume with nothing left to do: start-up and checks only
        rates.append(tiles / max(1e-6, full - fixed))
        per_tile.append(during / tiles / 2)
        out.unlink()
    entry: dict = {"tiles_per_s": round(statistics.median(rates), 1), "all": [round(r, 1) for r in rates]}
    if server:
        entry["requests_per_tile_and_date"] = round(statistics.median(per_tile), 3)
    return entry


def read_paths(cogs: tuple[Path, Path], latency_ms: float, sample: int) -> dict:
    """Requests and seconds to read ``sample`` tiles of both dates over HTTP: tile by tile, and as a run reads them
    (batches of 8 tiles, the default, with the tiles of a row in one window per date)."""
    from ccexpert_core.geo.grid import TileGrid
    from ccexpert_core.geo.raster import RasterSeries, read_environment

    found = {}
    for how in ("tile by tile", "as a run reads them (rows of a batch in one window)"):
        server = Server(cogs[0].parent, latency_ms)
        try:
            urls = [f"{server.url}/{path.name}" for path in cogs]
            with read_environment(), RasterSeries(urls, log=lambda m: None) as pair:
                grid = TileGrid(pair.grid.width, pair.grid.height, pair.grid.gdal_transform, TILE)
                tiles = grid.tiles()[:sample]
                opened = server.requests()
                start = time.perf_counter()
                if how == "tile by tile":
                    for tile in tiles:
                        pair.read_dates(tile)
                else:
                    for first in range(0, len(tiles), 8):
                        pair.read_tiles(tiles[first : first + 8])
                seconds = time.perf_counter() - start
                requests = server.requests() - opened
        finally:
            server.stop()
        found[how] = {"requests_per_tile_and_date": round(requests / len(tiles) / 2, 3),
                      "ms_per_tile_one_thread": round(1000 * seconds / len(tiles), 1)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    report: dict = {"machine": f"{os.cpu_count()}-core {platform.machine()}",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "latency_ms": args.latency_ms}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cogs = write_cogs(folder, args.tiles)
        tiles = math.ceil(math.sqrt(args.tiles)) ** 2
        report["tiles"] = tiles
        for name, (batch_s, max_batch) in STANDINS.items():
            process, url = start_standin(batch_s, max_batch)
            try:
                local = run_rates((str(cogs[0]), str(cogs[1])), url, folder, tiles, args.repeats, None)
                entry = {"local": local}
                for latency in (0.0, args.latency_ms):
                    server = Server(cogs[0].parent, latency)
                    try:
                        urls = (f"{server.url}/{cogs[0].name}", f"{server.url}/{cogs[1].name}")
                        remote = run_rates(urls, url, folder, tiles, args.repeats, server)
                    finally:
                        server.stop()
                    remote["share_of_local"] = round(remote["tiles_per_s"] / local["tiles_per_s"], 3)
                    entry[f"HTTP, {latency:g} ms per request"] = remote
                report[name] = entry
            finally:
                process.kill()
                process.wait()
        report["reads of 48 tiles, one thread"] = read_paths(cogs, args.latency_ms, 48)
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
