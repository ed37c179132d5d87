"""How long scoring the LEVIR-CC test set takes (1,929 pairs × 5 references), METEOR's JVM started once.

    .venv/bin/python bench/evaluation_speed.py [--predictions FILE] [--runs N]

Prints wall-clock and CPU seconds (this process + the JVM) for: reading the predictions, a whole evaluation
(JVM start included, as ``ccexpert evaluate`` runs it), and, with one scorer kept open, the JVM start plus a first
score versus a second score on the warm JVM. The machine is shared, so wall time varies; CPU time less so.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ccexpert_core.evaluation import CaptionScorer, evaluate, read_ccexpert_predictions

T = TypeVar("T")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_PREDICTIONS = SHARED / "data" / "levircc" / "ccexpert7b_test_predictions.jsonl"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(action: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process and its finished children) of one call."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = action()
    return result, time.perf_counter() - wall, _cpu_seconds() - cpu


def main() -> None:
    """Run the measurements and print them as Markdown table rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=Path, default=DEFAULT_PREDICTIONS)
    parser.add_argument("--runs", type=int, default=3, help="whole evaluations to time (median reported)")
    args = parser.parse_args()

    data, read_wall, read_cpu = timed(lambda: read_ccexpert_predictions(args.predictions))
    runs = [timed(lambda: evaluate(data.predictions, data.references))[1:] for _ in range(args.runs)]
    with CaptionScorer() as scorer:
        # The JVM's CPU is only counted once it has exited, so these two rows give wall time only.
        _, first_wall, _ = timed(lambda: scorer.score(data.predictions, data.references))
        _, warm_wall, _ = timed(lambda: scorer.score(data.predictions, data.references))

    print(f"pairs: {len(data.references)}, references per pair: {len(next(iter(data.references.values())))}")
    print("| step | wall s | CPU s |")
    print("| --- | --- | --- |")
    print(f"| read predictions (JSON Lines) | {read_wall:.2f} | {read_cpu:.2f} |")
    walls, cpus = zip(*runs)
    print(
        f"| whole evaluation, JVM start included (median of {args.runs}; min–max wall "
        f"{min(walls):.1f}–{max(walls):.1f}) | {statistics.median(walls):.1f} | {statistics.median(cpus):.1f} |"
    )
    print(f"| open scorer: JVM start + first score | {first_wall:.1f} | – |")
    print(f"| open scorer: second score on the warm JVM | {warm_wall:.1f} | – |")


if __name__ == "__main__":
    main()
