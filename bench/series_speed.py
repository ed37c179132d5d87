"""Series of dates: ``Captioner.caption_series`` (each image through the vision tower once) against the same
intervals captioned as pairs (each image once per interval it belongs to), on the shipped demo model on the CPU.

Run: .venv/bin/python bench/series_speed.py [--tiles 8] [--dates 4] [--repeats 3] [--model PATH]
Both ways run the same pairs per model call (``--batch-size``, default all of them); the medians of alternated runs
are printed as JSON, with the vision tower's images and seconds per tile and whether the captions agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from ccexpert_core.data.synthetic import SceneGenerator
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.inference import Captioner
from ccexpert_core.series import TileWork, consecutive_intervals


class TowerMeter:
    """Images and wall seconds the vision tower spends, summed over its calls."""

    def __init__(self, captioner: Captioner) -> None:
        self.images, self.seconds, self._started = 0, 0.0, 0.0
        tower = captioner.model.model.vision_tower
        tower.register_forward_pre_hook(self._start)
        tower.register_forward_hook(self._stop)

    def _start(self, _module, args) -> None:
        self.images += args[0].shape[0]
        self._started = time.perf_counter()

    def _stop(self, *_) -> None:
        self.seconds += time.perf_counter() - self._started

    def take(self) -> tuple[int, float]:
        taken = (self.images, self.seconds)
        self.images, self.seconds = 0, 0.0
        return taken


def scenes(tiles: int, dates: int) -> list[list]:
    """``tiles`` series of ``dates`` synthetic 384 px scenes (consecutive scenes of the demo's generator)."""
    generator = SceneGenerator(seed=31)
    drawn = [generator.pair(index) for index in range((tiles * dates + 1) // 2)]
    images = [image for pair in drawn for image in (pair.before, pair.after)]
    return [images[t * dates : (t + 1) * dates] for t in range(tiles)]


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR))
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--dates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="pairs per model call (default: every interval at once)")
    args = parser.parse_args()
    captioner = Captioner.load(args.model, device="cpu")
    series = scenes(args.tiles, args.dates)
    intervals = consecutive_intervals(args.dates)
    pairs = [(tile[i], tile[j]) for tile in series for i, j in intervals]
    batch = args.batch_size or len(pairs)
    meter = TowerMeter(captioner)
    runs = {
        "series": lambda: [r for tile in captioner.caption_series(series, intervals, batch_size=batch) for r in tile],
        "pairs": lambda: captioner.caption(pairs, batch_size=batch),
    }
    for run in runs.values():
        run()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    # CPU seconds of this process (all its threads) as well: on a machine shared with other jobs, wall time also
    # counts the waits for a core.
    cpu_seconds: dict[str, list[float]] = {name: [] for name in runs}
    tower_seconds: dict[str, list[float]] = {name: [] for name in runs}
    tower_images: dict[str, int] = {}
    captions: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for name in sorted(runs, reverse=repeat % 2 == 1):  # alternate the order against drifting load
            meter.take()
            start, cpu_start = time.perf_counter(), time.process_time()
            results = runs[name]()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
            tower_images[name], spent = meter.take()
            tower_seconds[name].append(spent)
            captions[name] = [r.caption for r in results]
    median = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    # Each repeat runs both ways back to back: their ratio drifts less with the load than either time.
    ratios = [s / p for s, p in zip(seconds["series"], seconds["pairs"], strict=True)]
    # The processor's share (read and normalise each image, build the prompts) of the same work, on its own.
    preparing = {
        "series": lambda: captioner.prepare([TileWork(tuple(tile), intervals) for tile in series]),
        "pairs": lambda: captioner.prepare([TileWork.pair(*pair) for pair in pairs]),
    }
    prepare_seconds = {
        name: statistics.median(_timed(run) for _ in range(args.repeats)) for name, run in preparing.items()
    }
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": args.model,
        "tiles": args.tiles, "dates": args.dates, "intervals_per_tile": len(intervals), "pairs_per_call": batch,
        "seconds_median": {name: round(value, 3) for name, value in median.items()},
        "seconds_each_run": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "seconds_per_tile": {name: round(value / args.tiles, 4) for name, value in median.items()},
        "cpu_seconds_median": {name: round(value, 3) for name, value in cpu_median.items()},
        "saved_wall_median_of_repeats": f"{100 * (1 - statistics.median(ratios)):.1f}%",
        "saved_cpu": f"{100 * (1 - cpu_median['series'] / cpu_median['pairs']):.1f}%",
        "preprocessing_seconds_per_tile": {name: round(v / args.tiles, 4) for name, v in prepare_seconds.items()},
        "tower_images_per_tile": {name: images / args.tiles for name, images in tower_images.items()},
        "tower_seconds_per_tile": {
            name: round(statistics.median(values) / args.tiles, 4) for name, values in tower_seconds.items()
        },
        "same_captions": captions["series"] == captions["pairs"],
    }, indent=2))


if __name__ == "__main__":
    main()
