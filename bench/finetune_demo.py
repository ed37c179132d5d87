"""An analyst's corrections become a better demo model, end to end on the CPU:

1. a town of synthetic scenes (the demo town's generator and seed, 8 × 8 scenes) captioned by the shipped demo
   model with ``caption-region``;
2. an "analyst" reviews the tiles in row order, knowing the ground truth: a caption that names the right kind of
   change at the right place (or says no change where there is none) is accepted, any other is corrected to the
   truth's caption, until ``--corrections`` tiles are corrected;
3. ``ccexpert export-dataset`` of those reviewed tiles;
4. ``ccexpert train --recipe finetune`` on them, with a replay share of the demo's own training data;
5. both models on the corrected tiles (does the new one follow the corrections?) and on the 200 held-out pairs
   of the demo recipe (S*m: does it keep what it knew?).

    .venv/bin/python bench/finetune_demo.py [--corrections 20] [KEY=VALUE fine-tune overrides ...]

Works in out/finetune-demo (never touches the shipped model) and prints one JSON object; copy the figures into
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sqlite3
import time
from pathlib import Path

from affine import Affine

import ccexpert_cli as cli
from ccexpert_core.captions import NO_CHANGE_SENTENCES, is_no_change
from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import caption_kind, named_kind, synthetic_town, write_dataset
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.evaluation import CaptionScorer, evaluate
from ccexpert_core.geo import schema
from ccexpert_core.geo.gpkg import GeoPackage
from ccexpert_core.geo.synthetic import DEMO_CRS, DEMO_ORIGIN, DEMO_PIXEL_SIZE, DEMO_SEED, write_geotiff
from ccexpert_core.inference import Captioner
from ccexpert_core.training.finetune import run_finetune
from ccexpert_core.training.recipes import TRAIN_SEED, held_out_set

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "out" / "finetune-demo"
TOWN_SCENES = 8
_PLACE = re.compile(r"at the (top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")


def place(caption: str) -> str | None:
    """The place a caption in the generator's phrasing names (``at the top left``), if any."""
    found = _PLACE.search(caption.lower())
    return found.group(1) if found else None


def says_the_same(caption: str, truth: str) -> bool:
    """Whether a caption tells what ``truth`` tells: no change for no change, else the same kind of change at the
    same place (counts aside: the analyst corrects what and where)."""
    if is_no_change(truth) or is_no_change(caption):
        return is_no_change(truth) and is_no_change(caption)
    return caption_kind(caption) == caption_kind(truth) and place(caption) == place(truth)


def write_town(folder: Path) -> tuple[Path, Path, list[str]]:
    """The town's two GeoTIFFs and each scene's first true caption (row-major)."""
    town = synthetic_town(TOWN_SCENES, TOWN_SCENES, seed=DEMO_SEED)
    transform = Affine(DEMO_PIXEL_SIZE, 0, DEMO_ORIGIN[0], 0, -DEMO_PIXEL_SIZE, DEMO_ORIGIN[1])
    before = write_geotiff(folder / "town_before.tif", town.before, DEMO_CRS, transform)
    after = write_geotiff(folder / "town_after.tif", town.after, DEMO_CRS, transform)
    truths = [caption if change else NO_CHANGE_SENTENCES[0] for change, _, caption in town.truth]
    return before, after, truths


def review(gpkg: Path, truths: list[str], corrections: int) -> dict[str, int]:
    """The analyst's pass: accept what is right, correct what is not, row by row, until ``corrections`` tiles are
    corrected (written as the review panel writes them)."""
    package = GeoPackage(gpkg)
    counts = {schema.ACCEPTED: 0, schema.CORRECTED: 0}
    with package.connection as connection:
        rows = connection.execute('SELECT tile_id, "row", "col", caption FROM captions WHERE status = ? '
                                  'ORDER BY "row", "col"', (schema.CAPTIONED,)).fetchall()
        for tile_id, row, col, caption in rows:
            if counts[schema.CORRECTED] == corrections:
                break
            truth = truths[row * TOWN_SCENES + col]
            right = says_the_same(caption, truth)
            status = schema.ACCEPTED if right else schema.CORRECTED
            connection.execute(
                "UPDATE captions SET review_status = ?, reviewed_caption = ?, reviewed_at = CURRENT_TIMESTAMP "
                "WHERE tile_id = ?", (status, None if right else truth, tile_id),
            )
            counts[status] += 1
    package.close()
    return counts


def follows(model: Path, pairs_json: Path) -> dict[str, float]:
    """How a model captions the exported corrected tiles: saying what the correction says, and word for word."""
    corrected = [pair for pair, record in zip(read_cc_json(pairs_json), json.loads(pairs_json.read_text()))
                 if record["review_status"] == schema.CORRECTED]
    results = Captioner.load(model, device="cpu").caption([(p.before_path, p.after_path) for p in corrected])
    same = sum(says_the_same(result.caption, pair.captions[0]) for pair, result in zip(corrected, results))
    exact = sum(result.caption == pair.captions[0] for pair, result in zip(corrected, results))
    return {"corrected_tiles": len(corrected), "says_the_correction": same, "word_for_word": exact,
            "says_the_correction_pct": round(100 * same / len(corrected), 1)}


def held_out(model: Path, scorer: CaptionScorer) -> dict[str, float | str]:
    """S*m and friends of a model on the demo recipe's held-out pairs (seed 1000, never trained on)."""
    pairs = read_cc_json(held_out_set(REPO / "out" / "demo-recipe"))
    results = Captioner.load(model, device="cpu").caption([(p.before_path, p.after_path) for p in pairs], 16)
    predictions = {pair.uid: result.caption for pair, result in zip(pairs, results)}
    scores = evaluate(predictions, {pair.uid: list(pair.captions) for pair in pairs}, scorer=scorer)
    changed = [pair for pair in pairs if pair.changed and pair.change_type]
    kinds = sum(caption_kind(predictions[p.uid]) == named_kind(p.change_type) for p in changed)
    return {"S*m": round(scores["S*m"], 2), "change_accuracy": round(scores["change_accuracy"], 1),
            "kind_named_right": f"{kinds}/{len(changed)}", "distinct_captions": len(set(predictions.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=20)
    parser.add_argument("--replay-pairs", type=int, default=600, help="of the demo's training data (seed 1)")
    parser.add_argument("--replay-share", type=float, help="default: the recipe's (training/configs/finetune)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in ("captions.gpkg", "dataset", "model"):
        path = WORK / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    before, after, truths = write_town(WORK)
    gpkg = WORK / "captions.gpkg"
    assert cli.main(["caption-region", "--before", str(before), "--after", str(after), "--out", str(gpkg),
                     "--model", str(DEMO_MODEL_DIR)]) == 0
    reviewed = review(gpkg, truths, args.corrections)
    dataset = WORK / "dataset"
    assert cli.main(["export-dataset", "--captions", str(gpkg), "--before", str(before), "--after", str(after),
                     "--out", str(dataset)]) == 0
    replay = WORK / "replay" / "pairs.json"
    stamp = replay.with_name("generated.json")
    wanted = {"count": args.replay_pairs, "seed": TRAIN_SEED}
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        write_dataset(replay.parent, args.replay_pairs, seed=TRAIN_SEED)
        stamp.write_text(json.dumps(wanted))
    started = time.time()
    model = run_finetune(dataset / "pairs.json", WORK / "model", str(DEMO_MODEL_DIR), replay, args.replay_share,
                         overrides=args.overrides)
    minutes = (time.time() - started) / 60
    with sqlite3.connect(gpkg) as connection:
        tiles = connection.execute("SELECT count(*) FROM captions").fetchone()[0]
    with CaptionScorer() as scorer:
        report = {
            "town_tiles": tiles,
            "reviewed": reviewed,
            "fine_tune": json.loads((model / "finetune.json").read_text()),
            "fine_tune_minutes": round(minutes, 1),
            "corrections_followed": {"shipped": follows(DEMO_MODEL_DIR, dataset / "pairs.json"),
                                     "fine_tuned": follows(model, dataset / "pairs.json")},
            "held_out": {"shipped": held_out(DEMO_MODEL_DIR, scorer), "fine_tuned": held_out(model, scorer)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
