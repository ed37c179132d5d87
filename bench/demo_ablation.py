"""The demo recipe with one part taken away: same data, same three stages and steps, scored on the same held-out
pairs as the shipped model.

    .venv/bin/python bench/demo_ablation.py no-dim            # the DIM (and so its change-map head) switched off
    .venv/bin/python bench/demo_ablation.py no-change-loss    # the change-map loss weighted 0
    .venv/bin/python bench/demo_ablation.py full --scores-of ccexpert_core/demo_model   # score a trained model only

Trains into out/demo-ablation/VARIANT (never touches the shipped model) and prints one JSON object: held-out
scores, the trivial baseline, distinct captions, training samples/s per stage, wall minutes and the peak resident
memory of this process. Copy the numbers into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from ccexpert_core.training.recipes import DEMO_ABLATIONS, held_out_scores, train_demo_stages

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "out" / "demo-ablation"
#: The work folder of training/recipes/demo.sh, whose held-out pairs score a model given with --scores-of.
RECIPE_WORK = REPO / "out" / "demo-recipe"


def stage_speeds(final: Path) -> dict[str, float]:
    """Training samples/s of each stage, read from the stages' training summaries beside ``final``."""
    speeds = {}
    for summary in sorted(final.parent.parent.glob("stage*/final/training_summary.json")):
        history = json.loads(summary.read_text())["log_history"]
        rates = [entry["train_samples_per_second"] for entry in history if "train_samples_per_second" in entry]
        if rates:
            speeds[summary.parent.parent.name] = rates[-1]
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=[*DEMO_ABLATIONS, "full"])
    parser.add_argument("--scores-of", type=Path, help="score this trained model folder instead of training")
    args = parser.parse_args()
    if args.variant == "full" and not args.scores_of:
        parser.error("'full' scores a trained model: give --scores-of FOLDER (train it with ccexpert train --recipe demo)")
    started = time.time()
    work = RECIPE_WORK if args.scores_of else WORK / args.variant
    if args.scores_of:
        final = args.scores_of
    else:
        ablation = DEMO_ABLATIONS[args.variant]
        final = train_demo_stages(work, ablation["every"], ablation["first"])
    minutes = (time.time() - started) / 60
    scores = held_out_scores(final, work)
    report = {
        "variant": args.variant,
        "model": str(final),
        "train_minutes": round(minutes, 1),
        "samples_per_second": stage_speeds(final),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **scores,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
