"""Recipes: whole trainings as one command. ``demo`` rebuilds the model that ships inside the package."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import caption_kind, named_kind, write_dataset
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.errors import CCExpertError
from ccexpert_core.evaluation import CaptionScorer, evaluate
from ccexpert_core.inference import Captioner
from ccexpert_core.model import load_model, save_model
from ccexpert_core.training.config import StageConfig, load_stage_config
from ccexpert_core.training.run import FINAL, run_stage

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIGS = REPO / "training" / "configs" / "demo"
DEMO_WORK = REPO / "out" / "demo-recipe"
DEMO_STAGES = ("stage1", "stage2", "stage3")
#: Seeds of the synthetic data: training, validation during training, and a held-out set never trained on.
TRAIN_SEED, VAL_SEED, HELD_OUT_SEED = 1, 2, 1000
TRAIN_PAIRS, VAL_PAIRS, HELD_OUT_PAIRS = 3000, 48, 200


def _dataset(name: str, count: int, seed: int) -> Path:
    """The recipe's synthetic set ``name``, generated once and reused while its size and seed match."""
    path = DEMO_WORK / "data" / name / "pairs.json"
    stamp = path.with_name("generated.json")
    wanted = {"count": count, "seed": seed}
    if not path.is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        write_dataset(path.parent, count, seed=seed)
        stamp.write_text(json.dumps(wanted))
    return path


def held_out_scores(model_dir: Path, pairs_json: Path) -> dict[str, Any]:
    """Scores of a model on a CC JSON set, beside the trivial baseline of always saying the training set's most
    frequent caption."""
    pairs = read_cc_json(pairs_json)
    references = {pair.uid: list(pair.captions) for pair in pairs}
    captioner = Captioner.load(model_dir, device="cpu")
    results = captioner.caption([(p.before_path, p.after_path) for p in pairs], batch_size=16)
    predictions = {pair.uid: result.caption for pair, result in zip(pairs, results)}
    train = read_cc_json(DEMO_WORK / "data" / "train" / "pairs.json", check_images=False)
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


def _model_card(scores: dict[str, Any], minutes: float, parameters: int, kinds: bool) -> str:
    score = "pair-level change score and kind of change" if kinds else "pair-level change score"
    head = "per-token change-map head" + (" that also tells the kinds of change apart" if kinds else "")
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
`ccexpert train --recipe demo` (or `training/recipes/demo.sh`): {TRAIN_PAIRS} synthetic training pairs (seed
{TRAIN_SEED}), then the three stages of `training/configs/demo/` — I: DIM + projector; II: everything, under
DeepSpeed ZeRO-2; III: everything, one random caption per pair per epoch. Training took {minutes:.0f} minutes.

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


def install_demo_model(final: Path, minutes: float) -> Path:
    """Install a trained demo model as the package's (weights in float16: half the size, loaded back as float32),
    then score what ships on the held-out pairs and write its model card."""
    model, processor = load_model(final)
    if DEMO_MODEL_DIR.exists():
        shutil.rmtree(DEMO_MODEL_DIR)
    save_model(model.half(), processor, DEMO_MODEL_DIR)
    scores = held_out_scores(DEMO_MODEL_DIR, held_out_set())
    card = _model_card(scores, minutes, model.num_parameters(), bool(model.config.change_types))
    (DEMO_MODEL_DIR / "README.md").write_text(card)
    (DEMO_MODEL_DIR / "held_out_scores.json").write_text(json.dumps(scores, indent=1))
    return DEMO_MODEL_DIR


#: Ablations of the demo recipe (bench/demo_ablation.py): same data and steps, one part taken away. Values: the
#: overrides of stage I (the fresh model) and of every stage.
DEMO_ABLATIONS: dict[str, dict[str, list[str]]] = {
    "no-dim": {"first": ["model_overrides={dim_enabled: false, change_head: false}"], "every": []},
    "no-change-loss": {"first": [], "every": ["change_loss_weight=0"]},
}


def demo_stage_configs(
    work: Path = DEMO_WORK, overrides: list[str] = (), first_overrides: list[str] = ()
) -> list[StageConfig]:
    """The demo's three stages writing into ``work``/stage1..3, each starting from the previous one's final
    folder; ``overrides`` apply to every stage, ``first_overrides`` to stage I. All three are read and checked
    before anything trains."""
    configs = []
    for number, stage in enumerate(DEMO_STAGES, start=1):
        placement = [f"output_dir={work / stage}"]
        if number > 1:
            placement.append(f"init={work / DEMO_STAGES[number - 2] / FINAL}")
        extra = list(first_overrides) if number == 1 else []
        configs.append(load_stage_config(DEMO_CONFIGS / f"{stage}.yaml", [*placement, *overrides, *extra]))
    return configs


def train_demo_stages(work: Path = DEMO_WORK, overrides: list[str] = (), first_overrides: list[str] = ()) -> Path:
    """Train :func:`demo_stage_configs` on the recipe's data (generated once under ``out/demo-recipe/data``);
    returns the last stage's final folder."""
    configs = demo_stage_configs(work, overrides, first_overrides)
    _dataset("train", TRAIN_PAIRS, TRAIN_SEED)
    _dataset("val", VAL_PAIRS, VAL_SEED)
    final = None
    for config in configs:
        final = run_stage(config)
    return final


def run_demo_recipe(overrides: list[str] = ()) -> Path:
    """Generate the data, train the three demo stages and install the result as the package's demo model
    (``ccexpert_core/demo_model``), scored on held-out pairs. Returns that folder."""
    started = time.time()
    final = train_demo_stages(DEMO_WORK, overrides)
    return install_demo_model(final, (time.time() - started) / 60)


def held_out_set() -> Path:
    """The recipe's held-out pairs (CC JSON), generated on first use."""
    return _dataset("held_out", HELD_OUT_PAIRS, HELD_OUT_SEED)


RECIPES = {"demo": run_demo_recipe}


def run_recipe(name: str, overrides: list[str] = ()) -> Path:
    """Run a named recipe."""
    if name not in RECIPES:
        raise CCExpertError(f"unknown recipe '{name}': choose one of {', '.join(RECIPES)}")
    return RECIPES[name](overrides)
