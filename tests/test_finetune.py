"""The fine-tune recipe: the replay mixture's share, change targets for the samples that have them, LoRA on the
language model only, and a few real steps of the demo model on an export (the new folder loads with every
command, its card names the data; adapters kept apart merge into the same model when asked); bad input refused in
one line before any model loads."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

import ccexpert_cli as cli
from ccexpert_core.data import read_cc_json
from ccexpert_core.data.synthetic import write_dataset
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.geo.gpkg import GeoPackage
from ccexpert_core.geo.region import RegionOptions, caption_region
from ccexpert_core.geo.runner import on_this_machine
from ccexpert_core.model import build_tiny_model, load_model
from ccexpert_core.training.config import LORA_TARGETS
from ccexpert_core.training.dataset import CaptionDataset, PairCollator
from ccexpert_core.training.lora import add_lora, lora_config
from ccexpert_core.training.trainer import CCExpertTrainer

from geo_fixtures import FakeEngine, write_pair

needs_demo_model = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "config.json").is_file(), reason="the demo model is not shipped in this checkout"
)
CORRECTION = "a road has been built at the left"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic pairs with change masks (the replay) and an analyst-like set without (masks removed)."""
    folder = tmp_path_factory.mktemp("finetune-data")
    write_dataset(folder / "replay", 24, seed=1, size=192)
    write_dataset(folder / "tiles", 6, seed=7, size=192)
    shutil.rmtree(folder / "tiles" / "mask")
    return folder


def write_export(folder: Path) -> Path:
    """An export of four reviewed tiles (two corrected) of a region run in ``folder``; returns its CC JSON."""
    before, after = write_pair(folder)
    gpkg = folder / "captions.gpkg"
    caption_region(before, after, gpkg, lambda: on_this_machine(FakeEngine()), RegionOptions(tile_size=64), log=lambda message: None)
    package = GeoPackage(gpkg)
    with package.connection as connection:
        for tile_id, caption in (("r0_c0", CORRECTION), ("r0_c1", None), ("r1_c1", "there is no difference"),
                                 ("r2_c2", None)):
            connection.execute(
                "UPDATE captions SET review_status = ?, reviewed_caption = ? WHERE tile_id = ?",
                ("corrected" if caption else "accepted", caption, tile_id),
            )
    package.close()
    assert cli.main(["export-dataset", "--captions", str(gpkg), "--before", str(before), "--after", str(after),
                     "--out", str(folder / "dataset")]) == 0
    return folder / "dataset" / "pairs.json"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("share", [0.25, 0.5, 0.8])
def test_the_replay_mixture_has_the_asked_share_drawn_again_each_epoch(data: Path, share: float) -> None:
    tiles, replay = read_cc_json(data / "tiles" / "pairs.json"), read_cc_json(data / "replay" / "pairs.json")
    dataset = CaptionDataset(tiles, "random_choice", seed=3, replay=replay, replay_share=share)
    replay_ids = {pair.uid for pair in replay}

    def drawn() -> list[str]:
        return [sample.uid for sample in dataset.samples if sample.uid in replay_ids]

    first = drawn()
    assert len(dataset) == len(tiles) + len(first)
    assert len(first) / len(dataset) == pytest.approx(share, abs=0.5 / len(dataset))
    assert sorted(s.uid for s in dataset.samples if s.uid not in replay_ids) == sorted(p.uid for p in tiles)
    dataset.set_epoch(1)
    assert drawn() != first and len(drawn()) == len(first)
    dataset.set_epoch(0)
    assert drawn() == first


def test_change_targets_count_only_the_samples_that_have_a_mask(data: Path, tmp_path: Path) -> None:
    model, processor = build_tiny_model(change_head=True, dim_change_summary=True)
    with_mask = CaptionDataset(read_cc_json(data / "replay" / "pairs.json"), "flatten").samples[:2]
    without = CaptionDataset(read_cc_json(data / "tiles" / "pairs.json"), "flatten").samples[:2]
    collate = PairCollator(processor, with_masks=True)
    mixed = collate([with_mask[0], without[0], with_mask[1], without[1]])
    assert mixed["change_mask_known"].tolist() == [True, False, True, False]
    assert "change_mask" not in collate(without) and "change_mask_known" not in collate(with_mask)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = CCExpertTrainer(model=model, args=args, processor=processor, learning_rate=1e-3,
                              vision_learning_rate=1e-3)
    trainer.compute_loss(model, dict(mixed))
    trainer.compute_loss(model, collate(with_mask))
    mixed_loss, masked_loss = trainer._change_losses
    assert mixed_loss == pytest.approx(masked_loss, rel=1e-5)


def test_lora_adapts_the_language_model_only_beside_the_fully_trained_groups() -> None:
    model, _ = build_tiny_model(change_head=True)
    tuned = add_lora(model, lora_config(model, 4, 8, 0.0, LORA_TARGETS, ["dim", "projector"]))
    trainable = [name for name, parameter in tuned.named_parameters() if parameter.requires_grad]
    adapters = [name for name in trainable if "lora_" in name]
    assert adapters and all(".language_model." in name for name in adapters)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapters} == set(LORA_TARGETS)
    whole = [name for name in trainable if "lora_" not in name]
    assert whole and all(".modules_to_save." in name for name in whole)
    assert {part for name in whole for part in ("dim", "change_head", "multi_modal_projector") if f".{part}." in name} \
        == {"dim", "change_head", "multi_modal_projector"}
    assert not any("vision_tower" in name for name in trainable)


def test_the_export_s_corrected_tiles_are_known_for_their_repeats(export: Path, data: Path) -> None:
    from ccexpert_core.training.dataset import corrected_uids

    records = json.loads(export.read_text())
    assert corrected_uids(export) == {r["uid"] for r in records if r["tile_id"] in ("r0_c0", "r1_c1")}
    assert corrected_uids(data / "replay" / "pairs.json") == set()


def test_words_a_word_level_vocabulary_lacks_are_named(data: Path) -> None:
    from ccexpert_core.data import PairSample
    from ccexpert_core.training.run import _unknown_words

    _, processor = build_tiny_model()
    pair = read_cc_json(data / "tiles" / "pairs.json")[0]
    known = PairSample(pair.uid, pair.before_path, pair.after_path, (CORRECTION,), True)
    taught = PairSample(pair.uid, pair.before_path, pair.after_path, ("solar panels cover the roof",), True)
    assert _unknown_words(processor, [known]) == []
    assert _unknown_words(processor, [known, taught]) == ["cover", "panels", "roof", "solar"]


def train(*args: str) -> int:
    return cli.main(["train", "--recipe", "finetune", *map(str, args)])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{out}"], "needs --data"),
        (["--data", "{data}", "--out", "{out}", "--model", "preset:tiny"], "random weights"),
        (["--data", "{data}", "--out", "{folder}"], "is not an empty folder"),
        (["--data", "{data}", "--out", "{out}", "--replay-share", "0.5"], "--replay-share needs --replay"),
        (["--data", "{data}", "--out", "{out}", "--replay", "{data}", "--replay-share", "1"], "replay_share must be"),
        (["--data", "{data}", "--out", "{out}", "trainable=[dim, language]"], "trains through its adapters"),
        (["--merge", "{out}", "--out", "{out}", "--data", "{data}"], "nothing else: not --data"),
        (["--merge", "{out}", "--out", "{out}2"], "not a LoRA adapter folder"),
        # KEY=VALUE overrides are checked like every other value: their type, finite, in range.
        (["--data", "{data}", "--out", "{out}", "learning_rate=abc"],
         "learning_rate must be a finite number, not 'abc' (override learning_rate=abc)"),
        (["--data", "{data}", "--out", "{out}", "learning_rate=nan"], "learning_rate must be a finite number, not 'nan'"),
        (["--data", "{data}", "--out", "{out}", "learning_rate=.inf"], "learning_rate must be a finite number, not inf"),
        (["--data", "{data}", "--out", "{out}", "max_steps=1e400"], "max_steps must be a whole number, not '1e400'"),
        (["--data", "{data}", "--out", "{out}", "max_steps=2.5"], "max_steps must be a whole number, not 2.5"),
        (["--data", "{data}", "--out", "{out}", "max_steps=0"], "max_steps must be -1 (run the epochs) or at least 1"),
        (["--data", "{data}", "--out", "{out}", "epochs=-1"], "epochs must be above 0"),
        (["--data", "{data}", "--out", "{out}", "warmup_ratio=2"], "warmup_ratio must be from 0 to 1"),
        (["--data", "{data}", "--out", "{out}", "merge_lora=maybe"], "merge_lora must be true or false, not 'maybe'"),
        (["--data", "{data}", "--out", "{out}", "lora_rank=true"], "lora_rank must be a whole number, not True"),
        (["--data", "{data}", "--out", "{out}", "trainable=dim"], "trainable must be a list of names ([a, b]), not 'dim'"),
        (["--data", "{data}", "--out", "{out}", "lr_scheduler=[a]"], "lr_scheduler must be text, not ['a']"),
        (["--data", "{data}", "--out", "{out}", "learning_rate="], "learning_rate must be a finite number, not None"),
    ],
)
@needs_demo_model
def test_bad_input_is_refused_in_one_line(export: Path, tmp_path: Path, extra: list[str], message: str,
                                          capsys, monkeypatch) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fine-tune started: a model was loaded")

    monkeypatch.setattr("ccexpert_core.training.finetune.run_stage", no_training)
    out = tmp_path / "model"
    assert train(*(part.format(out=out, data=export, folder=export.parent) for part in extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


@needs_demo_model
def test_numbers_written_as_yaml_1_1_reads_them_are_numbers(export: Path, tmp_path: Path) -> None:
    from ccexpert_core.training.finetune import finetune_config

    config = finetune_config(str(DEMO_MODEL_DIR), export, tmp_path / "m", overrides=["learning_rate=2e-3",
                                                                                      "max_steps=1e3"])
    assert config.learning_rate == 2e-3 and config.max_steps == 1000 and isinstance(config.max_steps, int)


def captions_of(model: Path, pairs) -> list[str]:
    from ccexpert_core.inference import Captioner

    return [r.caption for r in Captioner.load(model, device="cpu").caption([(p.before_path, p.after_path) for p in pairs])]


@pytest.mark.slow
@needs_demo_model
def test_a_few_steps_on_an_export_give_a_model_every_command_loads(
    export: Path, data: Path, tmp_path: Path, capsys
) -> None:
    from peft import PeftModel

    steps = ["max_steps=2", "per_device_batch_size=4", "logging_steps=1"]
    model = tmp_path / "model"
    assert train("--data", export, "--out", model, "--replay", data / "replay" / "pairs.json",
                 "--replay-share", "0.25", *steps, "corrected_repeats=3") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(model)
    record = json.loads((model / "finetune.json").read_text())
    assert record["steps"] == 2 and record["pairs"] == 4 and record["replay"]["share"] == 0.25
    assert record["corrected_repeats"] == 3
    assert record["lora"]["merged"] and record["lora"]["fully_trained"] == ["dim", "projector"]
    card = (model / "README.md").read_text()
    gpkg = export.parent.parent / "captions.gpkg"
    assert str(gpkg.resolve()) in card and "2 corrected" in card and "2 accepted" in card
    assert str((data / "replay" / "pairs.json").resolve()) in card and "25%" in card and "3 times per epoch" in card
    assert not (model / "checkpoints").exists()
    # Every command loads it: the plain model folder.
    assert cli.main(["model-info", "--model", str(model)]) == 0
    pair = read_cc_json(export)[0]
    assert cli.main(["caption-pair", "--model", str(model), str(pair.before_path), str(pair.after_path)]) == 0
    before, after = (export.parent.parent / name for name in ("before.tif", "after.tif"))
    assert cli.main(["caption-region", "--model", str(model), "--before", str(before), "--after", str(after),
                     "--out", str(tmp_path / "again.gpkg"), "--tile-size", "64", "--max-tiles", "9"]) == 0
    with sqlite3.connect(tmp_path / "again.gpkg") as connection:
        assert connection.execute("SELECT count(*) FROM captions WHERE status = 'captioned'").fetchone()[0] == 9

    # Adapters kept apart, then merged when asked: the same model as the adapters on their base.
    adapter = tmp_path / "adapter"
    assert train("--data", export, "--out", adapter, *steps, "merge_lora=false") == 0
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    assert "--merge" in (adapter / "README.md").read_text()
    merged = tmp_path / "merged"
    assert train("--merge", adapter, "--out", merged) == 0
    base, processor = load_model(DEMO_MODEL_DIR)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    plain, _ = load_model(merged)
    batch = processor([(pair.before_path, pair.after_path)], answers=[pair.captions[0]])
    with torch.no_grad():
        assert torch.allclose(tuned(**batch).logits, plain(**batch).logits, atol=1e-4)
    assert cli.main(["model-info", "--model", str(merged)]) == 0
