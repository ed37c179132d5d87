"""The committed demo model against fresh synthetic pairs it has never seen (a seed no training used)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import caption_kind, named_kind, write_dataset
from ccexpert_core.defaults import DEMO_MODEL_DIR, default_model
from ccexpert_core.evaluation import CaptionScorer, evaluate
from ccexpert_core.inference import Captioner
from ccexpert_core.training.recipes import HELD_OUT_SEED, TRAIN_SEED, VAL_SEED

FRESH_SEED = 777  # neither the training, validation nor the recipe's held-out seed
HELD_OUT = 200


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> dict:
    assert FRESH_SEED not in (TRAIN_SEED, VAL_SEED, HELD_OUT_SEED)
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model yet: build it with training/recipes/demo.sh")
    pairs = read_cc_json(write_dataset(tmp_path_factory.mktemp("fresh"), HELD_OUT, seed=FRESH_SEED))
    references = {pair.uid: list(pair.captions) for pair in pairs}
    results = Captioner.load(DEMO_MODEL_DIR, device="cpu").caption(
        [(p.before_path, p.after_path) for p in pairs], batch_size=16
    )
    predictions = {pair.uid: result.caption for pair, result in zip(pairs, results)}
    # The trivial baseline: always the training set's most frequent caption (recorded by the recipe).
    most_common = json.loads((DEMO_MODEL_DIR / "held_out_scores.json").read_text())["most_frequent_caption"]
    with CaptionScorer() as scorer:
        model = evaluate(predictions, references, scorer=scorer)
        baseline = evaluate({uid: most_common for uid in references}, references, scorer=scorer)
    changed = [pair for pair in pairs if pair.changed]
    kinds_right = sum(caption_kind(predictions[pair.uid]) == named_kind(pair.change_type) for pair in changed)
    print(f"\ndemo model on {HELD_OUT} fresh pairs: {model}\nbaseline ('{most_common}'): {baseline}")
    print(f"kind of change named right in {kinds_right} of {len(changed)} changed pairs")
    return {
        "model": model, "baseline": baseline, "distinct": len(set(predictions.values())),
        "kinds_right": kinds_right / len(changed),
    }


def test_default_model_is_the_demo_model_where_it_ships() -> None:
    shipped = (DEMO_MODEL_DIR / "config.json").is_file()
    assert (Path(default_model()) == DEMO_MODEL_DIR) == shipped


def test_demo_model_tells_change_from_no_change(scores: dict) -> None:
    assert scores["model"]["change_accuracy"] >= 90.0


def test_demo_model_beats_the_most_frequent_caption_clearly(scores: dict) -> None:
    assert scores["model"]["S*m"] >= scores["baseline"]["S*m"] + 10.0
    # Not collapsed onto the caption prior: besides "no change", it names several kinds of change.
    assert scores["distinct"] >= 10


def test_demo_model_names_the_kind_of_change(scores: dict) -> None:
    assert scores["kinds_right"] >= 0.8
