"""Recipes: whole trainings as one command. ``demo`` makes the model that ships inside the package
(``training/recipes/demo.sh`` installs it there).

A recipe works in a folder its user chooses (``ccexpert train --recipe demo --out WORK``, default
:data:`DEFAULT_DEMO_WORK` under the current folder): its synthetic data, its stages and the model it makes are
written there, and every path of its shipped stage settings (:mod:`ccexpert_core.training.shipped`) is read from
there.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import caption_kind, named_kind, write_dataset
from ccexpert_core.evaluation import CaptionScorer, evaluate
from ccexpert_core.inference import Captioner
from ccexpert_core.model import load_model, save_model
from ccexpert_core.training.config import StageConfig, load_stage_config
from ccexpert_core.training.run import run_stage
from ccexpert_core.training.shipped import recipe_config

DEMO_STAGES = ("stage1", "stage2", "stage3")
#: The demo recipe's work folder where none is given, under the current folder.
DEFAULT_DEMO_WORK = Path("demo-recipe")
#: The model the demo recipe makes, in its work folder.
DEMO_MODEL = "model"
#: Seeds of the synthetic data: training, validation during training, and a held-out set never trained on.
TRAIN_SEED, VAL_SEED, HELD_OUT_SEED = 1, 2, 1000


@dataclass(frozen=True)
class DemoData:
    """How many synthetic pairs the demo recipe generates: to train on, to validate on while training, held out."""

    train: int = 3000
    val: int = 48
    held_out: int = 200


RECIPE_DATA = DemoData()
#: A smoke run (``--smoke``) checks that the recipe runs on this machine in a minute or two: a few pairs, one step
#: per stage, saved, no evaluation while training (an untrained model's captions run to the length limit); the
#: model is scored on the held-out pairs as the recipe's is. It is not trained.
SMOKE_DATA = DemoData(train=32, val=4, held_out=8)
SMOKE_OVERRIDES = ("max_steps=1", "save_steps=1", "eval_data=null")


def _dataset(work: Path, name: str, count: int, seed: int) -> Path:
    """The recipe's synthetic set ``name`` in ``work``/data, generated once and reused while its size and seed
    match."""
    path = work / "data" / name / "pairs.json"
    stamp = path.with_name("generated.json")
    wanted = {"count": count, "seed": seed}
    if not path.is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        write_dataset(path.parent, count, seed=seed)
        stamp.write_text(json.dumps(wanted))
    return path


def held_out_scores(model_dir: Path, work: Path, data: DemoData = RECIPE_DATA) -> dict[str, Any]:
    """Scores of a model on the recipe's held-out pairs in ``work`` (generated on first use), beside the trivial
    baseline of always saying the most frequent caption of the training pairs there."""
    pairs = read_cc_json(held_out_set(work, data.held_out))
    references = {pair.uid: list(pair.captions) for pair in pairs}
    captioner = Captioner.load(model_dir, device="cpu")
    results = captioner.caption([(p.before_path, p.after_path) for p in pairs], batch_size=16)
    predictions = {pair.uid: result.caption for pair, result in zip(pairs, results)}
    train = read_cc_json(_dataset(work, "train", data.train, TRAIN_SEED), check_images=False)
    most_frequent = Counter(caption for pair in train for caption in pair.captions).most_common(1)[0][0]
    with CaptionScorer() as scorer:
        model_scores = evaluate(predictions, references, scorer=scorer)
        baseline = evaluate({uid: most_frequent for uid in references}, references, scorer=scorer)
    changed = [pair for pair in pairs if pair.changed and pair.change_type]
    kinds_right = sum(caption_kind(predictions[pair.uid]) == named_kind(pair.change_type) for pair in changed)
    return {
        "pairs": len(pairs),
        "model": model_scores,
        "most_frequent_caption": most_frequent,
        "baseline": baseline,
        "distinct_captions": len(set(predictions.values())),
        "changed_pairs": len(changed),
        "kind_named_right": kinds_right,
    }


def _model_card(
    scores: dict[str, Any], minutes: float, parameters: int, kinds: bool, data: DemoData, smoke: bool
) -> str:
    score = "pair-level change score and kind of change" if kinds else "pair-level change score"
    head = "per-token change-map head" + (" that also tells the kinds of change apart" if kinds else "")
    smoked = "\nThis was a smoke run (`--smoke`): one step per stage, so this model is not trained." if smoke else ""
    rows = "\n".join(
        f"| {name} | {scores['model'][name]:.2f} | {scores['baseline'][name]:.2f} |"
        for name in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m", "change_accuracy")
    )
    return f"""# CCExpert demo model

A small CCExpert (SigLIP-style vision tower 128 wide × 4 layers with patch 32 — 144 tokens per image —, the
Difference-aware Integration Module on tower layers 2 and 4 with two additions that are not in the paper, a
Qwen2-style language model 192 wide × 3 layers, a word-level tokenizer; {parameters / 1e6:.1f}M parameters) trained
on this project's synthetic bi-temporal scenes on a 2-core CPU: buildings built or demolished, roads built or
widened, trees cleared, bare land developed, and no change (how well it tells them apart is in the scores below).
It has never seen real imagery: use it to try the tools, not to describe real places.

The additions to the DIM: a change summary added to every image token, with a {score};
and a {head}.

## Recipe
`ccexpert train --recipe demo` (or `training/recipes/demo.sh`): {data.train} synthetic training pairs (seed
{TRAIN_SEED}), then the three stages of `training/configs/demo/` — I: DIM + projector; II: everything, under
DeepSpeed ZeRO-2; III: everything, one random caption per pair per epoch. Training took {minutes:.0f} minutes.{smoked}

## Held-out scores
{scores['pairs']} freshly generated pairs (seed {HELD_OUT_SEED}, never used in training), scored like LEVIR-CC
(×100; change accuracy in %). Baseline: always answer the training set's most frequent caption
("{scores['most_frequent_caption']}").

| metric | demo model | baseline |
| --- | --- | --- |
{rows}

The model produced {scores['distinct_captions']} distinct captions on these pairs.
Of the {scores['changed_pairs']} changed pairs, {scores['kind_named_right']} captions name the right kind of change
(bare land developed counts as buildings built: four of its five reference captions say so). Places and counts in
its captions are often wrong.
"""


def write_demo_model(
    final: Path, work: Path, minutes: float, data: DemoData = RECIPE_DATA, smoke: bool = False
) -> Path:
    """Write a trained demo model to ``work``/model (weights in float16: half the size, loaded back as float32),
    then score it on the held-out pairs and write its model card. Returns that folder."""
    model, processor = load_model(final)
    target = work / DEMO_MODEL
    if target.exists():
        shutil.rmtree(target)
    save_model(model.half(), processor, target)
    scores = held_out_scores(target, work, data)
    card = _model_card(scores, minutes, model.num_parameters(), bool(model.config.change_types), data, smoke)
    (target / "README.md").write_text(card)
    (target / "held_out_scores.json").write_text(json.dumps(scores, indent=1))
    return target


#: Ablations of the demo recipe (bench/demo_ablation.py): same data and steps, one part taken away. Values: the
#: overrides of stage I (the fresh model) and of every stage.
DEMO_ABLATIONS: dict[str, dict[str, list[str]]] = {
    "no-dim": {"first": ["model_overrides={dim_enabled: false, change_head: false}"], "every": []},
    "no-change-loss": {"first": [], "every": ["change_loss_weight=0"]},
}


def demo_stage_configs(
    work: Path, overrides: Sequence[str] = (), first_overrides: Sequence[str] = ()
) -> list[StageConfig]:
    """The demo's three shipped stages with their paths read from ``work`` (so writing into ``work``/stage1..3,
    each starting from the previous one's final folder); ``overrides`` apply to every stage, ``first_overrides`` to
    stage I. All three are read and checked before anything trains."""
    return [
        load_stage_config(recipe_config("demo", stage), [*overrides, *(first_overrides if number == 1 else ())], work)
        for number, stage in enumerate(DEMO_STAGES, start=1)
    ]


def train_demo_stages(
    work: Path, overrides: Sequence[str] = (), first_overrides: Sequence[str] = (), data: DemoData = RECIPE_DATA
) -> Path:
    """Train :func:`demo_stage_configs` on the recipe's data (generated once under ``work``/data); returns the last
    stage's final folder."""
    configs = demo_stage_configs(work, overrides, first_overrides)
    _dataset(work, "train", data.train, TRAIN_SEED)
    _dataset(work, "val", data.val, VAL_SEED)
    return [run_stage(config) for config in configs][-1]


def run_demo_recipe(work: Path = DEFAULT_DEMO_WORK, overrides: Sequence[str] = (), smoke: bool = False) -> Path:
    """Generate the data, train the three demo stages in ``work`` and write the model to ``work``/model, scored on
    held-out pairs, with its model card. Returns that folder (``training/recipes/demo.sh`` installs it as the
    package's demo model)."""
    work = Path(work).resolve()
    data = SMOKE_DATA if smoke else RECIPE_DATA
    started = time.time()
    final = train_demo_stages(work, [*(SMOKE_OVERRIDES if smoke else ()), *overrides], data=data)
    return write_demo_model(final, work, (time.time() - started) / 60, data, smoke)


def held_out_set(work: Path, count: int = RECIPE_DATA.held_out) -> Path:
    """The recipe's held-out pairs (CC JSON) in ``work``, generated on first use."""
    return _dataset(work, "held_out", count, HELD_OUT_SEED)
