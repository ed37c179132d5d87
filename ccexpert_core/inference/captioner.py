"""The Captioner: load a model once, caption pairs of images, or series of dates, in batches.

One path for every caller (``ccexpert serve`` and its Ray replicas, in-process regions, Ray Data actors, training's
evaluation): tiles of work (:class:`~ccexpert_core.series.TileWork`, a pair being a series of two) go through
``prepare`` (CPU), ``generate`` (the model, and only the model) and ``finish`` (CPU), so that callers can keep the
model busy by preparing the next batch and finishing the last one on other threads. Each image goes through the
vision tower once, whatever the number of intervals it belongs to.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor, load_model
from ccexpert_core.model.processing_ccexpert import ImageInput, PairInput
from ccexpert_core.model_card import ModelCard, describe_model
from ccexpert_core.series import Interval, TileWork, consecutive_intervals, regroup

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA where available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CaptionError(CCExpertError):
    """The model's answer for a pair is no caption (empty, or from scores that are not finite): raised rather than
    returned, so a broken model or a numerics problem never reaches an output as a caption."""


@dataclass(frozen=True)
class PreparedWork:
    """Tiles ready for the model, made on the CPU by :meth:`Captioner.prepare` (P pairs in all).

    pixel_values: (n, 3, H, W) uint8, each image an interval uses once, tile by tile (page-locked for a GPU).
    before, after: (P,) the rows of ``pixel_values`` that each pair compares, tile by tile, interval by interval.
    input_ids, attention_mask: (P, S) the prompt, one row per pair. per_tile: how many of the P pairs each tile has.
    """

    pixel_values: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    per_tile: tuple[int, ...]

    @property
    def pairs(self) -> int:
        """How many pairs (tile × interval) the batch holds."""
        return len(self.before)


@dataclass(frozen=True)
class Generated:
    """What the model answered for a prepared batch, on the CPU: :meth:`Captioner.finish` makes results of it.

    sequences: (P, L) the generated token ids. log_probs: (P, L) each chosen token's log-probability.
    change_maps: (P, g²) per image token the probability that its place changed, None without a change-map head.
    change_kinds: (P,) the change summary's kind (0: none, k: ``change_types[k - 1]``), None without kinds.
    """

    sequences: torch.Tensor
    log_probs: torch.Tensor
    change_maps: torch.Tensor | None
    change_kinds: torch.Tensor | None
    per_tile: tuple[int, ...]


class _NeverGenerate(LogitsProcessor):
    """Takes ``banned`` ids (a bool mask over the output layer's rows) out of every step's choice: rows beyond the
    tokenizer (a checkpoint's padding: nothing decodes them) and the image/video placeholders, as the reference
    implementation, whose embeddings are resized to the tokenizer, never generates them."""

    def __init__(self, banned: torch.Tensor) -> None:
        self.banned = banned

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(self.banned, float("-inf"))


class _ChosenLogProbs(LogitsProcessor):
    """Records, step by step, the log-probability of the token greedy decoding takes: the top score's log-softmax,
    max − logsumexp over the vocabulary, so no step's (batch, vocabulary) scores outlive the step.

    generate runs it after its own processors, so it sees the very scores greedy takes the argmax of: the model's
    logits, as long as the model's generation config adds no score-changing processor (a repetition penalty and
    the like; the demo model's adds none). It changes nothing.
    """

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values = scores.float()
        self.steps.append(values.amax(dim=-1) - values.logsumexp(dim=-1))
        return scores

    def log_probs(self) -> torch.Tensor:
        """(batch, steps) on the CPU."""
        return torch.stack(self.steps, dim=1).cpu()


class Captioner:
    """Captions pairs of images, or tiles seen at several dates, with one loaded CCExpert (greedy decoding).

    Every way of captioning goes through the same three steps, so that a server or a pipeline can run them on
    different threads and keep the model busy: :meth:`prepare` (CPU, thread-safe: images to uint8 tensors, the prompt
    repeated), :meth:`generate` (the model only, one call at a time) and :meth:`finish` (CPU: tokens to captions).
    :meth:`caption_work`, :meth:`caption` and :meth:`caption_series` are the three in turn, batch by batch.

    A result (:class:`~ccexpert_core.captions.CaptionResult`) holds the caption, ``change_detected`` (false for a
    no-change sentence) and ``confidence`` (geometric-mean probability of the generated tokens). An empty answer,
    or one from scores that are not finite, raises :class:`CaptionError`.
    """

    def __init__(
        self,
        model: CCExpertForConditionalGeneration,
        processor: PairProcessor,
        model_id: str,
        max_new_tokens: int = 40,
        card: ModelCard | None = None,
        source: str | None = None,
        allow_empty: bool = False,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        #: The model's public id (folder name and fingerprint, never a path): what outputs and backends record.
        self.model_id = model_id
        #: The model's public description: id, name, and a note where its captions need one.
        self.card = card or ModelCard(model_id, model_id, None)
        #: What the model was loaded from (a folder path, hub id or preset), for whoever must find it again.
        self.source = source or model_id
        #: Give an empty answer as an empty caption of confidence 0 (a model being trained scores it so) rather
        #: than raise :class:`CaptionError` (for every user-facing caption).
        self.allow_empty = allow_empty
        self.max_new_tokens = max_new_tokens
        self._model_lock = threading.Lock()
        #: Output rows generation never chooses (bool mask): beyond the tokenizer, and the image/video placeholders.
        self.never_generated = self._undecodable_ids()

    @classmethod
    def load(
        cls, model: str | Path, device: str | None = "auto", dtype: str | torch.dtype | None = None
    ) -> Captioner:
        """Load a model folder, hub id or ``preset:tiny``; fp32 on the CPU, bf16 on CUDA unless ``dtype`` says."""
        target = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = DTYPES[dtype]
        card = describe_model(str(model))  # before loading: a path that is not a model fails in load_model's words
        loaded, processor = load_model(model, device=target, dtype=dtype)
        return cls(loaded, processor, model_id=card.model_id, card=card, source=str(model))

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's weights' dtype."""
        return self.model.dtype

    @property
    def tile_size(self) -> int:
        """The image size the model sees (pairs of any size are resized to it)."""
        return self.processor.image_size

    @property
    def prompt(self) -> str:
        """The prompt the model is asked, in ChatML."""
        return self.processor.prompt

    # ----- in one call -----
    def caption(self, pairs: Sequence[PairInput], batch_size: int = 8) -> list[CaptionResult]:
        """Caption (before, after) pairs: images as paths, PIL images or H×W×3 uint8 arrays, any size."""
        work = [TileWork.pair(before, after) for before, after in pairs]
        return [results[0] for results in self.caption_work(work, batch_size)]

    def caption_series(
        self,
        series: Sequence[Sequence[ImageInput]],
        intervals: Sequence[Interval] | None = None,
        batch_size: int = 8,
    ) -> list[list[CaptionResult]]:
        """Caption tiles seen at T ≥ 2 dates: per tile, one result per interval (i, j), i < j, in the order of
        ``intervals`` (by default the consecutive ones, (0, 1), (1, 2), …).

        Each interval's result is what ``caption([(tile[i], tile[j])])`` gives, but each image goes through the
        vision tower once, whatever the number of intervals it belongs to.
        """
        try:
            work = [TileWork(tuple(tile), tuple(intervals or consecutive_intervals(len(tile)))) for tile in series]
        except ValueError as error:
            raise CCExpertError(str(error)) from None
        return self.caption_work(work, batch_size)

    def caption_work(self, work: Sequence[TileWork], batch_size: int = 8) -> list[list[CaptionResult]]:
        """Per tile, one result per interval: :meth:`prepare`, :meth:`generate` and :meth:`finish` over batches of
        about ``batch_size`` pairs (a batch holds at least one tile)."""
        results: list[list[CaptionResult]] = []
        for batch in batches_of_pairs(work, batch_size):
            results.extend(self.finish(self.generate(self.prepare(batch))))
        return results

    # ----- the three steps -----
    def prepare(self, work: Sequence[TileWork]) -> PreparedWork:
        """The processor's work for one batch of tiles, on the CPU (thread-safe, no model): each image an interval
        uses read once into a uint8 tensor, the prompt repeated. Raises CCExpertError for no tiles or an unreadable
        image."""
        if not work:
            raise CCExpertError("no images given")
        images: list[ImageInput] = []
        before: list[int] = []
        after: list[int] = []
        for tile in work:
            row_of = {date: len(images) + position for position, date in enumerate(tile.used_dates())}
            images.extend(tile.images[date] for date in tile.used_dates())
            before.extend(row_of[i] for i, _ in tile.intervals)
            after.extend(row_of[j] for _, j in tile.intervals)
        pin = self.device.type == "cuda"  # page-locked, so the copy to the GPU does not hold the model's thread
        pixel_values = self.processor.pixel_values(images, pin_memory=pin)
        input_ids, attention_mask = self.processor.prompt_ids(len(before))
        return PreparedWork(pixel_values, torch.tensor(before), torch.tensor(after), input_ids, attention_mask,
                            tuple(tile.pairs for tile in work))

    def generate(self, prepared: PreparedWork) -> Generated:
        """The model's work for a prepared batch, and nothing else (one call at a time: concurrent callers wait for
        each other): pixels to the device and normalised there, one vision-tower call over every image, the DIM
        and the projector per pair, one greedy generation over every pair."""
        inner = self.model.model
        with self._model_lock, torch.inference_mode():
            pixel_values = prepared.pixel_values.to(self.device, non_blocking=True)
            vision = inner.encode_images(pixel_values)
            features = inner.pair_image_features(
                vision, prepared.before.to(self.device), prepared.after.to(self.device)
            )
            del vision  # the tower's hidden states are done with: free them before the language model runs
            change_maps, change_kinds = self._change_maps(features)
            recorder = _ChosenLogProbs()
            sequences = self.model.generate(
                input_ids=prepared.input_ids.to(self.device),
                attention_mask=prepared.attention_mask.to(self.device),
                # generate takes ready image features as transformers' pre-encoded multimodal outputs.
                mm_encoder_outputs={"image": features},
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.processor.end_of_turn_id,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([_NeverGenerate(self.never_generated), recorder]),
            )
            return Generated(
                sequences[:, prepared.input_ids.shape[1] :].cpu(), recorder.log_probs(),
                None if change_maps is None else change_maps.cpu(),
                None if change_kinds is None else change_kinds.cpu(), prepared.per_tile,
            )

    def finish(self, generated: Generated) -> list[list[CaptionResult]]:
        """The results of :meth:`generate`'s answer, on the CPU: per tile, one per interval."""
        end_of_turn = self.processor.end_of_turn_id
        kinds = list(self.model.config.change_types or [])
        maps = None if generated.change_maps is None else generated.change_maps.tolist()
        told = None if generated.change_kinds is None else generated.change_kinds.tolist()
        grid = 0 if maps is None else math.isqrt(len(maps[0]))
        flat = []
        for row, tokens in enumerate(generated.sequences.tolist()):
            # The answer runs to the first end-of-turn token (included: it is the model's decision to stop).
            length = tokens.index(end_of_turn) + 1 if end_of_turn in tokens else len(tokens)
            scores = generated.log_probs[row, :length]
            if not torch.isfinite(scores).all():
                step = int((~torch.isfinite(scores)).nonzero()[0])
                raise CaptionError(
                    f"the model's scores for pair {row} of this batch are not finite (NaN or inf) at answer token "
                    f"{step}: a broken model, or a numerics problem of {self.dtype} on {self.device}; try float32"
                )
            caption = self.processor.decode(tokens[:length])
            if not caption and self.allow_empty:
                flat.append(CaptionResult("", False, 0.0))
                continue
            if not caption:
                raise CaptionError(
                    f"the model's answer for pair {row} of this batch is empty (token ids {tokens[:length][:8]}): "
                    "it gave no caption"
                )
            change_map = None
            if maps is not None:
                change_map = tuple(tuple(maps[row][r * grid : (r + 1) * grid]) for r in range(grid))
            kind = kinds[told[row] - 1] if kinds and told is not None and told[row] else None
            flat.append(CaptionResult.from_caption(caption, math.exp(scores.mean().item()), change_map, kind))
        return regroup(flat, generated.per_tile)

    # ----- the model's helpers -----
    def _change_maps(self, features: object) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per pair, the change-map head's probabilities (P, g²) and the change summary's kind (P,), where the
        model has them (on the device)."""
        inner = self.model.model
        change = getattr(features, "change_features", None)
        if inner.change_head is None or change is None:
            return None, None
        probabilities = torch.sigmoid(inner.change_head(change)[0].float())
        scores = getattr(features, "change_type_score", None)
        kinds = scores.argmax(-1) if self.model.config.change_types and scores is not None else None
        return probabilities, kinds

    def _undecodable_ids(self) -> torch.Tensor:
        """A mask over the output layer's rows: True for what generation must never choose (rows at or beyond the
        tokenizer's length, the image and video placeholders)."""
        rows = self.model.get_output_embeddings().out_features
        banned = torch.zeros(rows, dtype=torch.bool)
        banned[len(self.processor.tokenizer) :] = True
        config = self.model.config
        for token in (self.processor.image_token_id, getattr(config, "image_token_id", None),
                      getattr(config, "video_token_id", None)):
            if token is not None and 0 <= token < rows:
                banned[token] = True
        return banned.to(self.device)


def batches_of_pairs(work: Sequence[TileWork], pairs: int) -> Iterator[list[TileWork]]:
    """Consecutive tiles in batches of at most ``pairs`` pairs (a tile with more goes alone)."""
    batch: list[TileWork] = []
    size = 0
    for tile in work:
        if batch and size + tile.pairs > pairs:
            yield batch
            batch, size = [], 0
        batch.append(tile)
        size += tile.pairs
    if batch:
        yield batch
