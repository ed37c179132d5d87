"""How far p_right, fitted on a few reviews, beats the model's raw confidence, on synthetic pairs whose truth is known.

1. ``--pairs`` held-out synthetic pairs (seed 1000: the demo recipe's held-out seed, never trained on) captioned by
   the shipped demo model in-process; a caption is right when it tells what the truth tells (no change for no
   change, else the same kind of change at the same place: ``finetune_demo.says_the_same``, the analyst of the
   fine-tune bench).
2. For 10, 25 and 50 reviews, ``--draws`` times: that many pairs drawn at random are "reviewed" (their rightness
   known), the layer's calibration is fitted on them exactly as ``ccexpert calibrate`` and the review dock fit it
   (``geo.calibration.calibrate``), and the other pairs (held out from the fit) are scored: AUROC for "caption right"
   of the raw confidence and of p_right, expected calibration error (10 bins) of each, and how many wrong captions
   the first 20 tiles hold in three orders: most uncertain first (the dock's: p_right, lowest first), lowest
   confidence first, and random.
3. The same once with the reviews taken as the dock gives them before any fit: the lowest-confidence tiles first.

    .venv/bin/python bench/calibration.py [--pairs 1200] [--draws 200] [--prior-sd 0.5,0.25,0.5]

``--prior-sd`` compares another prior with the shipped one (``geo.calibration.PRIOR_SD``).

Prints one JSON object (the figures in bench/RESULTS.md come from it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime

import numpy as np
from finetune_demo import says_the_same  # the fine-tune bench's analyst: same kind of change, same place

from ccexpert_core.data.synthetic import SceneGenerator
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.geo import calibration
from ccexpert_core.inference import Captioner

HELD_OUT_SEED = 1000
REVIEWS = (10, 25, 50)
FIRST = 20


def auroc(score: np.ndarray, right: np.ndarray) -> float:
    """The probability that a right caption scores above a wrong one (ties count half)."""
    positive, negative = score[right], score[~right]
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def captioned(count: int) -> dict[str, np.ndarray]:
    """The demo model's confidence, change flag and rightness on ``count`` held-out pairs."""
    generator = SceneGenerator(HELD_OUT_SEED, 384)
    pairs = [generator.pair(index) for index in range(count)]
    results = Captioner.load(DEMO_MODEL_DIR, device="cpu").caption([(p.before, p.after) for p in pairs], 16)
    return {
        "confidence": np.array([r.confidence for r in results]),
        "changed": np.array([r.change_detected for r in results]),
        "right": np.array([says_the_same(r.caption, p.captions[0]) for r, p in zip(results, pairs)]),
    }


def scored(data: dict[str, np.ndarray], reviewed: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Fit on the ``reviewed`` indices, score the others."""
    samples = [calibration.Sample(float(data["confidence"][k]), bool(data["changed"][k]), 0, bool(data["right"][k]))
               for k in reviewed]
    fitted = calibration.calibrate(samples, {0: (None, None)})
    assert fitted is not None
    rest = np.setdiff1d(np.arange(len(data["right"])), reviewed)
    confidence, right = data["confidence"][rest], data["right"][rest]
    p_right = fitted.intervals[0].p_right(confidence, data["changed"][rest])
    ties = rng.random(len(rest))  # equal values (the same caption, the same confidence) in a random order

    def wrong_first(key: np.ndarray) -> int:
        return int((~right[np.lexsort((ties, key))[:FIRST]]).sum())

    return {
        "auroc_confidence": auroc(confidence, right), "auroc_p_right": auroc(p_right, right),
        "ece_confidence": calibration.calibration_error(confidence, right),
        "ece_p_right": calibration.calibration_error(p_right, right),
        "wrong_in_first_20_most_uncertain": wrong_first(p_right),
        "wrong_in_first_20_lowest_confidence": wrong_first(confidence),
        "wrong_in_first_20_random": int((~right[rng.permutation(len(rest))[:FIRST]]).sum()),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": round(float(np.nanmean([r[key] for r in runs])), 4),
                  "sd": round(float(np.nanstd([r[key] for r in runs])), 4)} for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--prior-sd", help="the prior's three deviations (intercept, slope, changed shift)")
    args = parser.parse_args()
    if args.prior_sd:
        intercept, slope, changed_shift = (float(value) for value in args.prior_sd.split(","))
        calibration.PRIOR_SD = (intercept, slope, changed_shift)
    started = time.perf_counter()
    data = captioned(args.pairs)
    captioning_s = time.perf_counter() - started
    right, changed = data["right"], data["changed"]
    rng = np.random.default_rng(0)
    random_reviews = {
        str(n): summary([scored(data, rng.choice(len(right), n, replace=False), rng) for _ in range(args.draws)])
        for n in REVIEWS
    }
    lowest_first = {str(n): scored(data, np.argsort(data["confidence"], kind="stable")[:n], rng) for n in REVIEWS}
    print(json.dumps({
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "pairs": args.pairs, "draws": args.draws,
        "prior_sd": calibration.PRIOR_SD,
        "captioning_s": round(captioning_s, 1),
        "wrong": int((~right).sum()), "wrong_changed": int((~right & changed).sum()), "changed": int(changed.sum()),
        "confidence": {"min": round(float(data["confidence"].min()), 3),
                       "median": round(float(np.median(data["confidence"])), 3),
                       "max": round(float(data["confidence"].max()), 3),
                       "mean_right": round(float(data["confidence"][right].mean()), 3),
                       "mean_wrong": round(float(data["confidence"][~right].mean()), 3)},
        "all_pairs": {"auroc_confidence": round(auroc(data["confidence"], right), 4),
                      "ece_confidence": round(calibration.calibration_error(data["confidence"], right), 4)},
        "random_reviews": random_reviews, "lowest_confidence_reviews": lowest_first,
    }, indent=1))


if __name__ == "__main__":
    main()
