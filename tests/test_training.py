"""Three-stage training: stage definitions, parameter groups, caption handling, a real tiny run through all three
stages (DeepSpeed ZeRO-2 on the CPU in stage II), resuming, and refusals before training starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import write_dataset
from ccexpert_core.model import build_tiny_model, count_parameters, load_model
from ccexpert_core.training import STAGES, apply_trainable, load_stage_config, parameter_groups
from ccexpert_core.training.dataset import CaptionDataset
from ccexpert_core.training.run import _initial_model
from ccexpert_core.training.shipped import CONFIGS, DEEPSPEED

REPO = Path(__file__).resolve().parents[1]
CCEXPERT = Path(sys.executable).parent / "ccexpert"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    write_dataset(folder / "train", 16, seed=5, size=192)
    write_dataset(folder / "val", 4, seed=6, size=192)
    return folder


def write_stage(folder: Path, name: str, **values) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainable_counts_match_the_stage_definition(stage: int) -> None:
    model, _ = build_tiny_model(change_head=True)
    counts = apply_trainable(model, STAGES[stage]["trainable"])
    sizes = count_parameters(model)
    head = sum(p.numel() for p in model.model.change_head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if stage == 1:
        assert trainable == sizes["dim"] + head + sizes["projector"]
        assert counts == {"vision": 0, "dim": sizes["dim"] + head, "projector": sizes["projector"], "language": 0}
    else:
        # Everything but LLaVA-OneVision's unused image-newline embedding.
        assert trainable == sizes["total"] - model.model.image_newline.numel()
    assert sum(counts.values()) == trainable


def test_vision_tower_has_its_own_learning_rate_group() -> None:
    model, _ = build_tiny_model()
    apply_trainable(model, STAGES[2]["trainable"])
    groups = parameter_groups(model, learning_rate=1e-5, vision_learning_rate=2e-6, weight_decay=0.0)
    vision = {id(p) for p in model.model.vision_tower.parameters()}
    by_name = {group["name"]: group for group in groups}
    assert by_name["vision"]["lr"] == 2e-6 and by_name["rest"]["lr"] == 1e-5
    assert {id(p) for p in by_name["vision"]["params"]} == vision
    assert not vision & {id(p) for p in by_name["rest"]["params"]}
    assert {id(p) for p in model.model.dim.parameters()} <= {id(p) for p in by_name["rest"]["params"]}


def test_default_vision_rate_is_a_fifth_of_the_base(data: Path) -> None:
    config = load_stage_config(write_stage(data, "lr", stage=2, init="preset:tiny", output_dir="o", data="train/pairs.json"))
    assert config.vision_lr == pytest.approx(0.2 * config.learning_rate)
    assert config.caption_handling == "flatten" and config.trainable == ["vision", "dim", "projector", "language"]


def test_flatten_and_random_choice_sample_counts(data: Path) -> None:
    pairs = read_cc_json(data / "train" / "pairs.json")
    assert len(CaptionDataset(pairs, "flatten")) == 5 * len(pairs)
    random = CaptionDataset(pairs, "random_choice", seed=3)
    first = [s.caption for s in random.samples]
    assert len(random) == len(pairs)
    random.set_epoch(1)
    assert [s.caption for s in random.samples] != first
    random.set_epoch(0)
    assert [s.caption for s in random.samples] == first


def run_train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([str(CCEXPERT), "train", "--config", str(config), *overrides],
                          capture_output=True, text=True, timeout=900, env=env)


def losses(final: Path) -> list[float]:
    history = json.loads((final / "training_summary.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.slow
def test_three_stages_learn_and_each_starts_from_the_previous(data: Path) -> None:
    common = dict(data="train/pairs.json", per_device_batch_size=4, logging_steps=1, learning_rate=2e-3,
                  gradient_checkpointing=False, warmup_ratio=0.0, lr_scheduler="constant")
    s1 = write_stage(data, "s1", stage=1, init="preset:tiny", output_dir="s1", max_steps=4, save_steps=4,
                     model_overrides={"change_head": True}, **common)
    s2 = write_stage(data, "s2", stage=2, init="s1/final", output_dir="s2", max_steps=10, save_steps=10,
                     deepspeed="zero2", **common)
    s3 = write_stage(data, "s3", stage=3, init="s2/final", output_dir="s3", max_steps=4, save_steps=4,
                     eval_data="val/pairs.json", eval_pairs=4, eval_steps=4, **common)
    for config in (s1, s2, s3):
        result = run_train(config)
        assert result.returncode == 0, result.stderr[-3000:]

    fresh, _ = build_tiny_model(change_head=True)
    stage1, _ = load_model(data / "s1" / "final")
    # Stage I trains only the DIM (with its head) and the projector.
    assert torch.equal(stage1.model.vision_tower.embeddings.patch_embedding.weight,
                       fresh.model.vision_tower.embeddings.patch_embedding.weight)
    assert not torch.equal(stage1.model.dim.change_init.gate.weight, fresh.model.dim.change_init.gate.weight)
    # Each stage starts from the previous stage's weights.
    for config, previous in ((s2, "s1"), (s3, "s2")):
        started, _ = _initial_model(load_stage_config(config), [])
        saved, _ = load_model(data / previous / "final")
        for (key, value), other in zip(started.state_dict().items(), saved.state_dict().values()):
            assert torch.equal(value, other), key
    stage2_losses = losses(data / "s2" / "final")
    assert sum(stage2_losses[-3:]) / 3 < sum(stage2_losses[:3]) / 3
    summary = json.loads((data / "s3" / "final" / "training_summary.json").read_text())
    assert "eval_S*m" in summary["eval"] and summary["eval"]["eval_pairs"] == 4


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(data: Path) -> None:
    config = write_stage(data, "resume", stage=2, init="preset:tiny", output_dir="resume", data="train/pairs.json",
                         per_device_batch_size=4, logging_steps=1, max_steps=2, save_steps=2,
                         gradient_checkpointing=False)
    assert run_train(config).returncode == 0
    first = losses(data / "resume" / "final")
    result = run_train(config, "max_steps=4", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((data / "resume" / "final" / "training_summary.json").read_text())
    history = [entry for entry in summary["log_history"] if "loss" in entry]
    # Steps 1-2 come back from checkpoint-2's state as they were; only steps 3-4 were trained again.
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    assert [entry["loss"] for entry in history[:2]] == first
    assert summary["global_step"] == 4 and (data / "resume" / "checkpoint-4").is_dir()


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(stage=4), "unknown stage"),
        (dict(stage=1, learning_rat=1e-3), "unknown config key"),
        (dict(stage=1, trainable=["vision", "eyes"]), "trainable must list"),
        (dict(stage=1, data="nowhere.json"), "training data not found"),
        (dict(stage=1, data="missing-images.json"), "image files are missing"),
        (dict(stage=1, data="empty-captions.json"), "change_caption"),
        (dict(stage=1, deepspeed="no-such.json"), "DeepSpeed config not found"),
        (dict(stage=1, deepspeed="zero4"), "'zero4' is not a shipped DeepSpeed config (zero2, zero3)"),
        (dict(stage=1, eval_data="val/pairs.json", eval_steps=3, save_steps=4),
         "save_steps (4) must be a multiple of eval_steps (3)"),
    ],
)
def test_bad_input_is_refused_before_training(values: dict, message: str, data: Path, capsys) -> None:
    (data / "missing-images.json").write_text(json.dumps(
        [{"uid": "a", "img1_path": "gone/a.png", "img2_path": "gone/b.png", "change_caption": ["x"]}]))
    (data / "empty-captions.json").write_text(json.dumps(
        [{"uid": "a", "img1_path": "train/A/s5_000000.png", "img2_path": "train/B/s5_000000.png", "change_caption": []}]))
    config = write_stage(data, "bad", **{"init": "preset:tiny", "output_dir": "bad", "data": "train/pairs.json", **values})
    from ccexpert_cli.main import main

    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (data / "bad").exists()  # refused before anything was written


@pytest.mark.parametrize("variant", ["recipe", "no-dim", "no-change-loss"])
def test_demo_stages_chain_and_ablations_take_one_part_away(tmp_path: Path, variant: str) -> None:
    from ccexpert_core.training.recipes import DEMO_ABLATIONS, demo_stage_configs

    ablation = DEMO_ABLATIONS.get(variant, {"first": [], "every": []})
    configs = demo_stage_configs(tmp_path, ablation["every"], ablation["first"])
    recipe = demo_stage_configs(tmp_path)
    assert [c.output_dir for c in configs] == [tmp_path / name for name in ("stage1", "stage2", "stage3")]
    assert [c.init for c in configs[1:]] == [str(tmp_path / "stage1" / "final"), str(tmp_path / "stage2" / "final")]
    # Every path from the work folder, but the DeepSpeed config: the package's own ZeRO-2, in stage II.
    assert {(c.data, c.eval_data) for c in configs} == {(tmp_path / "data" / "train" / "pairs.json",
                                                         tmp_path / "data" / "val" / "pairs.json")}
    assert [c.deepspeed for c in configs] == [None, DEEPSPEED / "zero2.json", None]
    # Same data and steps as the recipe; only the ablated part differs.
    assert [(c.data, c.max_steps, c.trainable) for c in configs] == [(c.data, c.max_steps, c.trainable) for c in recipe]
    overrides = configs[0].model_overrides
    weights = [c.change_loss_weight for c in configs]
    expected = {
        "recipe": ({}, [1.0, 1.0, 1.0]),
        "no-dim": ({"dim_enabled": False, "change_head": False}, [1.0, 1.0, 1.0]),
        "no-change-loss": ({}, [0.0, 0.0, 0.0]),
    }[variant]
    assert (overrides, weights) == expected


@pytest.mark.parametrize("config", sorted((REPO / "training" / "configs").glob("[0-9]*/stage*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_paper_s_stage_configs_read_their_paths_from_their_folder(config: Path) -> None:
    stage = load_stage_config(config)
    assert stage.output_dir.is_relative_to(REPO / "out") and stage.data.is_relative_to(REPO / "data")
    assert stage.deepspeed == DEEPSPEED / "zero2.json"  # named `zero2`: the shipped one, from any folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{shipped}"], "is a recipe's settings (its paths are relative to the recipe's work folder)"),
        (["--config", "{config}", "--out", "{out}"], "--out: only for a recipe"),
        (["--config", "{config}", "--smoke"], "--smoke: only for --recipe demo"),
        (["--recipe", "finetune", "--smoke", "--out", "{out}"], "--smoke: only for --recipe demo"),
        (["--recipe", "demo", "--config", "{config}"], "--recipe demo takes no --config"),
        (["--recipe", "demo", "--data", "{config}"], "--data: only for --recipe finetune"),
    ],
)
def test_recipe_options_are_refused_where_they_do_not_apply(args: list[str], message: str, data: Path,
                                                            tmp_path: Path, capsys) -> None:
    from ccexpert_cli.main import main

    config = write_stage(data, "plain", stage=1, init="preset:tiny", output_dir="plain", data="train/pairs.json")
    # Through training/'s link, as an operator would name it: read from the work folder alone, never beside itself.
    shipped = REPO / "training" / "configs" / "demo" / "stage1.yaml"
    assert shipped.resolve() == CONFIGS / "demo" / "stage1.yaml"
    before = sorted(CONFIGS.rglob("*"))
    assert main(["train", *(arg.format(shipped=shipped, config=config, out=tmp_path / "out") for arg in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(CONFIGS.rglob("*")) == before and not (data / "plain").exists() and not (tmp_path / "out").exists()


def test_change_loss_trains_the_change_map_head_and_the_summary_score(data: Path, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from ccexpert_core.training.dataset import PairCollator
    from ccexpert_core.training.trainer import CCExpertTrainer

    model, processor = build_tiny_model(change_head=True, dim_change_summary=True)
    samples = CaptionDataset(read_cc_json(data / "train" / "pairs.json"), "flatten").samples[:4]
    batch = PairCollator(processor, with_masks=True)(samples)
    assert batch["change_mask"].shape == (4, processor.tokens_per_image)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CCExpertTrainer(model=model, args=args, processor=processor, learning_rate=1e-3,
                              vision_learning_rate=1e-3)
    caption_loss = model(**{k: v for k, v in batch.items() if k != "change_mask"}).loss
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    assert loss.item() > caption_loss.item() and len(trainer._change_losses) == 1
    assert model.model.change_head.mlp[-1].weight.grad.abs().sum() > 0
    assert model.model.dim.summary.score.weight.grad.abs().sum() > 0


def test_change_types_train_the_kind_per_token_and_per_pair_where_the_data_knows_it(data: Path, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from ccexpert_core.data.synthetic import CHANGE_TYPES
    from ccexpert_core.training.dataset import UNCHANGED, PairCollator
    from ccexpert_core.training.trainer import CCExpertTrainer

    model, processor = build_tiny_model(change_head=True, dim_change_summary=True, change_types=list(CHANGE_TYPES))
    pairs = read_cc_json(data / "train" / "pairs.json")
    samples = CaptionDataset(pairs, "random_choice").samples[:6]
    batch = PairCollator(processor, with_masks=True, change_types=CHANGE_TYPES)(samples)
    expected = [CHANGE_TYPES.index(s.change_type) if s.changed else UNCHANGED for s in samples]
    assert batch["change_type"].tolist() == expected and UNCHANGED in expected and set(expected) != {UNCHANGED}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CCExpertTrainer(model=model, args=args, processor=processor, learning_rate=1e-3,
                              vision_learning_rate=1e-3)
    without_kinds = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "change_type"}).item()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    assert loss.item() > without_kinds
    assert model.model.change_head.kind.weight.grad.abs().sum() > 0
    assert model.model.dim.summary.kind.weight.grad.abs().sum() > 0


def test_change_type_loss_asks_no_change_or_which_kind_per_pair_and_skips_unknown_kinds() -> None:
    from ccexpert_core.training.dataset import NO_KIND, UNCHANGED
    from ccexpert_core.training.trainer import change_type_loss

    shares = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.2, 0.0]])  # per token: the changed share of its pixels
    kinds = torch.tensor([UNCHANGED, 2, NO_KIND])
    token_logits, pair_logits = torch.zeros(3, 2, 4), torch.zeros(3, 5)  # 4 kinds; per pair: no change + 4
    # Uniform logits: one changed token with a known kind (ln 4), two pairs with a known answer (ln 5 each).
    loss = change_type_loss(token_logits, pair_logits, shares, kinds)
    assert loss.item() == pytest.approx(math.log(4) + math.log(5))
    assert change_type_loss(token_logits, pair_logits, shares, torch.full((3,), NO_KIND)).item() == 0.0
