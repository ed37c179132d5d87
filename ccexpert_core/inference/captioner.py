"""The Captioner: load a model once, caption pairs of images, or series of dates, in batches.

Each batch is two steps, so a caller can prepare batch N+1 while the model runs batch N: ``prepare`` is the
processor's CPU work (read, resize, normalise, tokenise; thread-safe, no model) and ``caption_prepared`` the model
(one call at a time). ``caption`` is the two in turn, batch by batch; ``prepare_series`` /
``caption_series_prepared`` / ``caption_series`` do the same for tiles seen at T dates, each image through the vision
tower once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor, load_model
from ccexpert_core.model.processing_ccexpert import ImageInput, PairInput
from ccexpert_core.model_card import ModelCard, describe_model

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

#: (i, j): the indices of two dates of a series, i < j.
Interval = tuple[int, int]


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA where available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CaptionError(CCExpertError):
    """The model's answer for a pair is no caption (empty, or from scores that are not finite): raised rather than
    returned, so a broken model or a numerics problem never reaches an output as a caption."""


@dataclass(frozen=True)
class PreparedBatch:
    """A batch of pairs ready for the model, made on the CPU by :meth:`Captioner.prepare`.

    input_ids, attention_mask: (B, S) prompts, left-padded. pixel_values: (2B, 3, H, W) float32, each pair's
    before and after images interleaved.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class PreparedSeries:
    """Tiles seen at T dates, ready for the model, made on the CPU by :meth:`Captioner.prepare_series`.

    pixel_values: (n, 3, H, W) float32, each image used by an interval once, tile by tile. input_ids,
    attention_mask: (tiles · len(intervals), S), one prompt per tile and interval, tile-major. before, after: (same,)
    the rows of ``pixel_values`` that each of those pairs compares.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    intervals: tuple[Interval, ...]

    @property
    def tiles(self) -> int:
        """How many tiles the batch holds."""
        return self.input_ids.shape[0] // len(self.intervals)


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
    """Captions pairs of images with one loaded CCExpert (greedy decoding, batches left-padded).

    ``caption(pairs)`` returns, per pair in order, a :class:`~ccexpert_core.captions.CaptionResult`: the caption,
    ``change_detected`` (false for a no-change sentence) and ``confidence`` (geometric-mean probability of the
    generated tokens). An empty answer, or one from scores that are not finite, raises :class:`CaptionError`.
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
        # Every prompt is the same text (the images only fill its image tokens): a series' prompts repeat this row,
        # so no image is read twice to make them.
        blank = np.zeros((processor.image_size, processor.image_size, 3), dtype=np.uint8)
        row = processor([(blank, blank)])
        self._prompt_row = (row["input_ids"], row["attention_mask"])

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

    # ----- pairs -----
    def caption(self, pairs: Sequence[PairInput], batch_size: int = 8) -> list[CaptionResult]:
        """Caption (before, after) pairs: images as paths, PIL images or H×W×3 uint8 arrays, any size.

        Batch by batch, :meth:`prepare` then :meth:`caption_prepared`.
        """
        results: list[CaptionResult] = []
        for start in range(0, len(pairs), batch_size):
            results.extend(self.caption_prepared(self.prepare(pairs[start : start + batch_size])))
        return results

    def prepare(self, pairs: Sequence[PairInput]) -> PreparedBatch:
        """The processor's work for one batch of pairs, on the CPU: read, resize, normalise, tokenise.

        Thread-safe and never touches the model, so the next batch can be prepared while one is captioned.
        Raises CCExpertError for no pairs or an unreadable image.
        """
        inputs = self.processor(pairs)
        return PreparedBatch(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])

    def caption_prepared(self, prepared: PreparedBatch) -> list[CaptionResult]:
        """Caption a prepared batch with the model, one result per pair in order (one call at a time: concurrent
        callers wait for each other)."""
        with self._model_lock, self._capture_change_maps() as change_maps:
            pixel_values = prepared.pixel_values.to(device=self.device, dtype=self.dtype)
            return self._generate(prepared.input_ids, prepared.attention_mask, change_maps, pixel_values=pixel_values)

    # ----- series of dates -----
    def caption_series(
        self,
        series: Sequence[Sequence[ImageInput]],
        intervals: Sequence[Interval] | None = None,
        batch_size: int = 8,
    ) -> list[list[CaptionResult]]:
        """Caption tiles seen at T ≥ 2 dates: per tile, one result per interval (i, j), i < j, in the order of
        ``intervals`` (by default the consecutive ones, (0, 1), (1, 2), …).

        Each interval's result is what ``caption([(tile[i], tile[j])])`` gives, but each image goes through the
        vision tower once, whatever the number of intervals it belongs to. ``batch_size`` counts pairs (tile ×
        interval) per model call, as in :meth:`caption`; a call holds at least one tile.
        """
        if not series:
            return []
        intervals = _checked_intervals(series, intervals)
        tiles_per_batch = max(1, batch_size // len(intervals))
        results: list[list[CaptionResult]] = []
        for start in range(0, len(series), tiles_per_batch):
            prepared = self.prepare_series(series[start : start + tiles_per_batch], intervals)
            results.extend(self.caption_series_prepared(prepared))
        return results

    def prepare_series(
        self, series: Sequence[Sequence[ImageInput]], intervals: Sequence[Interval] | None = None
    ) -> PreparedSeries:
        """The processor's work for one batch of tiles at T dates, on the CPU (thread-safe, no model): each image
        that an interval uses is read and normalised once. Raises CCExpertError for no tiles, tiles of different
        or too few dates, bad intervals or an unreadable image."""
        if not series:
            raise CCExpertError("no series of images given")
        intervals = _checked_intervals(series, intervals)
        used = sorted({date for interval in intervals for date in interval})
        row_of = {date: position for position, date in enumerate(used)}
        pixel_values = self.processor.pixel_values([tile[date] for tile in series for date in used])
        before = torch.tensor([t * len(used) + row_of[i] for t in range(len(series)) for i, _ in intervals])
        after = torch.tensor([t * len(used) + row_of[j] for t in range(len(series)) for _, j in intervals])
        input_ids, attention_mask = (part.expand(len(before), -1).clone() for part in self._prompt_row)
        return PreparedSeries(input_ids, attention_mask, pixel_values, before, after, tuple(intervals))

    def caption_series_prepared(self, prepared: PreparedSeries) -> list[list[CaptionResult]]:
        """Caption a prepared series batch: one vision-tower call over all its images, then the DIM and the
        projector per pair and one generation over all its pairs. Per tile, one result per interval."""
        inner = self.model.model
        with self._model_lock, self._capture_change_maps() as change_maps, torch.inference_mode():
            pixel_values = prepared.pixel_values.to(device=self.device, dtype=self.dtype)
            vision = inner.encode_images(pixel_values)
            before, after = prepared.before.to(self.device), prepared.after.to(self.device)
            features = inner.pair_image_features(vision, before, after)
            del vision  # the tower's hidden states are done with: free them before the language model runs
            # generate takes ready image features as transformers' pre-encoded multimodal outputs.
            flat = self._generate(
                prepared.input_ids, prepared.attention_mask, change_maps, mm_encoder_outputs={"image": features}
            )
        per_tile = len(prepared.intervals)
        return [flat[start : start + per_tile] for start in range(0, len(flat), per_tile)]

    # ----- the model -----
    @torch.inference_mode()
    def _generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        change_maps: list,
        **image_inputs: object,
    ) -> list[CaptionResult]:
        """Greedy generation for prompts whose images are ``pixel_values`` or ready ``mm_encoder_outputs``;
        ``change_maps`` is the list that :meth:`_capture_change_maps` fills (by the end of generation)."""
        end_of_turn = self.processor.end_of_turn_id
        recorder = _ChosenLogProbs()
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            **image_inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=end_of_turn,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([recorder]),
        )
        generated = sequences[:, input_ids.shape[1] :].tolist()
        chosen = recorder.log_probs()
        results = []
        for row, tokens in enumerate(generated):
            # The answer runs to the first end-of-turn token (included: it is the model's decision to stop).
            length = tokens.index(end_of_turn) + 1 if end_of_turn in tokens else len(tokens)
            scores = chosen[row, :length]
            if not torch.isfinite(scores).all():
                step = int((~torch.isfinite(scores)).nonzero()[0])
                raise CaptionError(
                    f"the model's scores for pair {row} of this batch are not finite (NaN or inf) at answer token "
                    f"{step}: a broken model, or a numerics problem of {self.dtype} on {self.device}; try float32"
                )
            caption = self.processor.decode(tokens[:length])
            if not caption and self.allow_empty:
                results.append(CaptionResult("", False, 0.0))
                continue
            if not caption:
                raise CaptionError(
                    f"the model's answer for pair {row} of this batch is empty (token ids {tokens[:length][:8]}): "
                    "it gave no caption"
                )
            confidence = math.exp(scores.mean().item())
            change_map, kind = change_maps[row] if change_maps else (None, None)
            results.append(CaptionResult.from_caption(caption, confidence, change_map, model_kind=kind))
        return results

    @contextmanager
    def _capture_change_maps(self) -> Iterator[list]:
        """Yield a list that forward passes through the DIM fill with one (g×g change map, kind of change or None)
        per pair, for models with a change-map head (it stays empty otherwise). Only the prompt's pass sees images."""
        maps: list = []
        inner = self.model.model
        if inner.change_head is None:
            yield maps
            return

        kinds = list(self.model.config.change_types or [])

        def capture(_module, _inputs, output) -> None:
            probabilities = torch.sigmoid(inner.change_head(output.change)[0].float())
            grid = math.isqrt(probabilities.shape[1])
            rows = [tuple(tuple(values) for values in row) for row in probabilities.view(-1, grid, grid).tolist()]
            # A model that tells kinds apart says which one (index 0 of its summary's kinds is "no change").
            told = [None] * len(rows)
            if kinds and output.change_type_score is not None:
                told = [kinds[i - 1] if i else None for i in output.change_type_score.argmax(-1).tolist()]
            maps.extend(zip(rows, told))

        handle = inner.dim.register_forward_hook(capture)
        try:
            yield maps
        finally:
            handle.remove()


def _checked_intervals(series: Sequence[Sequence[ImageInput]], intervals: Sequence[Interval] | None) -> list[Interval]:
    """The intervals to caption in every tile, checked against the tiles' number of dates."""
    dates = {len(tile) for tile in series}
    if len(dates) != 1:
        raise CCExpertError(f"every tile of a series needs the same number of dates, got {sorted(dates)}")
    (count,) = dates
    if count < 2:
        raise CCExpertError(f"a series needs at least two dates per tile, got {count}")
    if intervals is None:
        return [(i, i + 1) for i in range(count - 1)]
    checked = [(int(i), int(j)) for i, j in intervals]
    bad = [(i, j) for i, j in checked if not 0 <= i < j < count]
    if not checked or bad:
        raise CCExpertError(
            f"intervals must be (i, j) date indices with 0 <= i < j < {count}; got {list(intervals)}"
        )
    return checked
