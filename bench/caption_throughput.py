"""Captioner throughput on the tiny preset: pairs/s at batch 1, 4 and 16, and the ratio to batch 1.

Run: .venv/bin/python bench/caption_throughput.py [--pairs 32] [--model preset:tiny]
Captions run to the model's own end (up to 40 tokens); with random weights that is usually the full 40.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from ccexpert_core.inference import Captioner


def measure(captioner: Captioner, pairs: list, batch_size: int) -> float:
    captioner.caption(pairs[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    captioner.caption(pairs, batch_size=batch_size)
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="preset:tiny")
    parser.add_argument("--pairs", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = [tuple(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)) for _ in range(args.pairs)]
    captioner = Captioner.load(args.model, device="cpu")
    rates = {batch: measure(captioner, pairs, batch) for batch in (1, 4, 16)}
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": args.model,
        "pairs": args.pairs,
        "pairs_per_s": {b: round(r, 2) for b, r in rates.items()},
        "ratio_to_batch_1": {b: round(r / rates[1], 2) for b, r in rates.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
