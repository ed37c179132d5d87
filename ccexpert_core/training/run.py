"""Run one training stage from its :class:`~ccexpert_core.training.config.StageConfig`."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from ccexpert_core.data import PairSample, load_mixture, read_cc_json
from ccexpert_core.data.inputs import some
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import (
    PairProcessor,
    build_preset_model,
    load_model,
    save_model,
)
from ccexpert_core.training.config import StageConfig
from ccexpert_core.training.dataset import CaptionDataset, PairCollator, corrected_uids
from ccexpert_core.training.lora import add_lora, lora_config, merged, save_adapter
from ccexpert_core.training.trainable import apply_trainable
from ccexpert_core.training.trainer import CCExpertTrainer, EpochCallback

log = logging.getLogger(__name__)
FINAL = "final"


def read_pairs(path: Path) -> list[PairSample]:
    """A CC JSON file or a YAML mixture of them (images must exist)."""
    if not path.exists():
        raise CCExpertError(f"training data not found: {path}")
    return load_mixture(path) if path.suffix in (".yaml", ".yml") else read_cc_json(path)


def _single_process_distributed_env() -> None:
    # DeepSpeed in a plain `python` process looks for MPI; describe a world of one instead.
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _initial_model(config: StageConfig, pairs: list[PairSample]):
    if config.init.startswith("preset:"):
        captions = [caption for pair in pairs for caption in pair.captions]
        return build_preset_model(config.init.removeprefix("preset:"), config.seed, captions, **config.model_overrides)
    if config.model_overrides:
        raise CCExpertError("model_overrides only apply to a fresh preset model (init: preset:NAME)")
    return load_model(config.init)


def _resume_from(config: StageConfig) -> str | bool | None:
    if config.resume is True:
        checkpoints = sorted(config.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            raise CCExpertError(f"resume: no checkpoint-* folder in {config.output_dir} to continue from")
        return str(checkpoints[-1])
    if isinstance(config.resume, Path):
        if not config.resume.is_dir():
            raise CCExpertError(f"resume: checkpoint folder not found: {config.resume}")
        return str(config.resume)
    return None


def training_arguments(config: StageConfig, has_eval: bool) -> TrainingArguments:
    """The Trainer's arguments for a stage (bf16 on CUDA unless told, fp32 on the CPU)."""
    cuda = torch.cuda.is_available()
    bf16 = cuda if config.bf16 == "auto" else bool(config.bf16)
    return TrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        bf16=bf16,
        use_cpu=not cuda,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=str(config.deepspeed) if config.deepspeed else None,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="S*m" if has_eval else None,
        greater_is_better=True,
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_workers,
        seed=config.seed,
        report_to="none",
    )


def _unknown_words(processor: PairProcessor, pairs: list[PairSample]) -> list[str]:
    """Words of the captions that the tokenizer can only write as its unknown token (a word-level vocabulary such
    as the demo model's: a model cannot learn to say them)."""
    tokenizer = processor.tokenizer
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return []
    words = {word for pair in pairs for caption in pair.captions for word in caption.split()}
    return sorted(word for word in words if unknown in tokenizer(word, add_special_tokens=False)["input_ids"])


def run_stage(config: StageConfig, final_dir: Path | None = None) -> Path:
    """Train one stage; the final (or best) weights go to ``final_dir`` (default ``output_dir/final``), which the
    next stage starts from. With ``lora_rank`` the language model trains through LoRA adapters, merged into the
    final weights unless ``merge_lora`` is off (then the final folder holds the adapters, see
    :func:`~ccexpert_core.training.lora.merge_adapter`).

    Everything is checked (data, images, config) before any training step runs.
    """
    set_seed(config.seed)
    pairs = read_pairs(config.data)
    if config.corrected_repeats > 1:
        marked = corrected_uids(config.data)
        corrected = [pair for pair in pairs if pair.uid in marked]
        pairs = pairs + corrected * (config.corrected_repeats - 1)
        log.warning("%d corrected tiles come %d times per epoch", len(corrected), config.corrected_repeats)
    replay = read_pairs(config.replay) if config.replay else []
    eval_pairs = read_cc_json(config.eval_data)[: config.eval_pairs] if config.eval_data else []
    dataset = CaptionDataset(pairs, config.caption_handling, config.seed, replay, config.replay_share)
    resume = _resume_from(config)
    final = Path(final_dir) if final_dir is not None else config.output_dir / FINAL
    model, processor = _initial_model(config, pairs)
    unknown_words = _unknown_words(processor, pairs)
    if unknown_words:
        log.warning("the model's vocabulary lacks %d words of the training captions (it cannot learn to say them): %s",
                    len(unknown_words), some(unknown_words, 8))
    counts = apply_trainable(model, config.trainable)
    with_masks, kinds = model.model.change_head is not None, tuple(model.config.change_types or ())
    if config.lora_rank:
        model = add_lora(model, lora_config(
            model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets, config.trainable
        ))
        counts["language"] = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    log.warning("stage %s: training %s (%d parameters)%s", config.stage, counts, sum(counts.values()),
                f", the language model through LoRA adapters of rank {config.lora_rank}" if config.lora_rank else "")
    unknown = sorted({pair.change_type for pair in pairs if pair.change_type} - set(kinds))
    if kinds and unknown:
        log.warning("the model does not know the change types %s of the data: their kind is not trained", unknown)
    if config.deepspeed:
        _single_process_distributed_env()
    trainer = CCExpertTrainer(
        model=model,
        args=training_arguments(config, bool(eval_pairs)),
        train_dataset=dataset,
        eval_dataset=eval_pairs or None,
        data_collator=PairCollator(processor, with_masks=with_masks, change_types=kinds),
        callbacks=[EpochCallback(dataset)],
        processor=processor,
        learning_rate=config.learning_rate,
        vision_learning_rate=config.vision_lr,
        adapter_learning_rate=config.lora_learning_rate,
        change_loss_weight=config.change_loss_weight,
        eval_pairs=eval_pairs,
    )
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        final_metrics = trainer.evaluate() if eval_pairs else {}
    finally:
        trainer.close()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if config.lora_rank and not config.merge_lora:
        save_adapter(trained, processor, final, config.init)
    else:
        save_model(merged(trained) if config.lora_rank else trained, processor, final)
    summary: dict[str, Any] = {
        "stage": config.stage,
        "init": config.init,
        "data": str(config.data),
        "pairs": len({pair.uid for pair in pairs}),
        "corrected_repeats": config.corrected_repeats,
        "replay": None if config.replay is None else {"data": str(config.replay), "pairs": len(replay),
                                                      "share": config.replay_share},
        "lora": None if not config.lora_rank else {
            "rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "learning_rate": config.lora_learning_rate or config.learning_rate,
            "targets": list(config.lora_targets), "fully_trained": list(config.trainable), "merged": config.merge_lora,
        },
        "trainable_parameters": counts,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "eval": final_metrics,
        "log_history": trainer.state.log_history,
    }
    (final / "training_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return final
