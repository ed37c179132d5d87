"""Hugging Face Trainer glue: parameter groups, the change-map loss, and evaluation by captioning (S*m)."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ccexpert_core.data import PairSample
from ccexpert_core.evaluation import CaptionScorer, evaluate
from ccexpert_core.inference import Captioner
from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor
from ccexpert_core.training.dataset import NO_KIND, UNCHANGED, CaptionDataset
from ccexpert_core.training.trainable import parameter_groups


def base_model(model: torch.nn.Module) -> CCExpertForConditionalGeneration:
    """The CCExpert inside a peft wrapper (its LoRA layers in place, so it computes with the adapters), or
    ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    # The trainer is only ever given a CCExpert, or a peft wrapper of one.
    return cast(CCExpertForConditionalGeneration, model if get_base_model is None else get_base_model())


class EpochCallback(TrainerCallback):
    """Draws each epoch's random captions (the "random choice" caption handling)."""

    def __init__(self, dataset: CaptionDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.dataset.set_epoch(int(state.epoch or 0))


def change_type_loss(
    token_logits: torch.Tensor | None, pair_logits: torch.Tensor | None, shares: torch.Tensor, kinds: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the kind of change against each pair's kind (B,) (:data:`UNCHANGED` for a no-change pair,
    :data:`NO_KIND` where unknown: no loss there): per token (B, N, K) on the changed tokens of changed pairs,
    per pair (B, 1 + K) over "no change" (index 0) and the kinds. Zero where nothing is known."""
    loss = shares.new_zeros(())
    if token_logits is not None:
        per_token = torch.where((shares > 0) & (kinds[:, None] >= 0), kinds[:, None], NO_KIND)
        if (per_token != NO_KIND).any():
            loss = loss + F.cross_entropy(token_logits.float().flatten(0, 1), per_token.flatten(), ignore_index=NO_KIND)
    per_pair = torch.where(kinds >= UNCHANGED, kinds + 1, NO_KIND)
    if pair_logits is not None and (per_pair != NO_KIND).any():
        loss = loss + F.cross_entropy(pair_logits.float(), per_pair, ignore_index=NO_KIND)
    return loss


class CCExpertTrainer(Trainer):
    """Trainer with the vision tower's own learning rate, the optional change-map loss, and an evaluation that
    captions ``eval_pairs`` greedily and scores them (S*m and the other published metrics, change accuracy)."""

    def __init__(
        self,
        *args: Any,
        processor: PairProcessor,
        learning_rate: float,
        vision_learning_rate: float,
        adapter_learning_rate: float | None = None,
        change_loss_weight: float = 1.0,
        eval_pairs: list[PairSample] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.processor = processor
        self.base_learning_rate = learning_rate
        self.vision_learning_rate = vision_learning_rate
        self.adapter_learning_rate = adapter_learning_rate
        self.change_loss_weight = change_loss_weight
        self.eval_pairs = eval_pairs or []
        self._scorer: CaptionScorer | None = None
        self._change_losses: list[float] = []

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW (or ``args.optim``) over the groups of :func:`parameter_groups`: the vision tower and LoRA adapters
        at their own absolute rates, the rest at the base rate."""
        if self.optimizer is None:
            model = model or self.model
            assert model is not None  # the Trainer was given one
            groups = parameter_groups(
                base_model(model), self.base_learning_rate, self.vision_learning_rate, self.args.weight_decay,
                self.adapter_learning_rate,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The caption loss (answer + end of turn), plus the weighted change loss where targets are given: the
        per-token change map and, with a change summary, the pair-level change score; for models with change
        types and pairs whose kind is known, also the kind per changed token and per pair. Only the rows with a
        mask count where ``change_mask_known`` says some have none."""
        change_mask = inputs.pop("change_mask", None)
        change_type = inputs.pop("change_type", None)
        known = inputs.pop("change_mask_known", None)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if change_mask is not None and self.change_loss_weight:
            heads = base_model(self.accelerator.unwrap_model(model)).change_logits(outputs.image_outputs)
            if heads is not None:
                logits, type_logits = heads
                targets = change_mask.to(logits.device).float()
                image_outputs = outputs.image_outputs
                score = image_outputs.change_score
                # Rows without a mask are not targets (their kinds are already unknown in change_type).
                rows = slice(None) if known is None else known.to(logits.device)
                change_loss = F.binary_cross_entropy_with_logits(logits[rows].float(), targets[rows])
                if score is not None:  # the change summary's pair-level "anything changed?"
                    change_loss = change_loss + F.binary_cross_entropy_with_logits(
                        score[rows].float(), (targets[rows].amax(dim=1) > 0).float()
                    )
                if change_type is not None:
                    kinds = change_type.to(logits.device)
                    change_loss = change_loss + change_type_loss(
                        type_logits, image_outputs.change_type_score, targets, kinds
                    )
                self._change_losses.append(change_loss.item())
                if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                    # The caption loss is already normalised over the accumulated batch; match it.
                    change_loss = change_loss / self.args.gradient_accumulation_steps
                loss = loss + self.change_loss_weight * change_loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Also log the change-map loss (mean since the last log) beside the total training loss."""
        if "loss" in logs and self._change_losses:
            logs["change_loss"] = round(sum(self._change_losses) / len(self._change_losses), 4)
            self._change_losses.clear()
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Caption the evaluation pairs greedily and score them; logs ``eval_S*m`` and friends."""
        if not self.eval_pairs:
            return {}
        model = base_model(self.accelerator.unwrap_model(self.model))
        was_training = model.training
        captioner = Captioner(model, self.processor, model_id="training", allow_empty=True)
        results = captioner.caption([(p.before_path, p.after_path) for p in self.eval_pairs], batch_size=16)
        model.train(was_training)
        predictions = {pair.uid: result.caption for pair, result in zip(self.eval_pairs, results)}
        references = {pair.uid: list(pair.captions) for pair in self.eval_pairs}
        if self._scorer is None:
            self._scorer = CaptionScorer().__enter__()
        scores = evaluate(predictions, references, scorer=self._scorer)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))}
        # One caption for every input means the model has collapsed onto the caption prior.
        metrics[f"{metric_key_prefix}_distinct_captions"] = float(len(set(predictions.values())))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def close(self) -> None:
        """Stop the METEOR JVM if an evaluation started one."""
        if self._scorer is not None:
            self._scorer.__exit__(None, None, None)
            self._scorer = None
