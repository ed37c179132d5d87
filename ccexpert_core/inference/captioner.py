"""The Captioner: load a model once, caption pairs of images in batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ccexpert_core.captions import CaptionResult
from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor, load_model
from ccexpert_core.model.processing_ccexpert import PairInput

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA where available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Captioner:
    """Captions pairs of images with one loaded CCExpert (greedy decoding, batches left-padded).

    ``caption(pairs)`` returns, per pair in order, a :class:`~ccexpert_core.captions.CaptionResult`: the caption,
    ``change_detected`` (false for a no-change sentence) and ``confidence`` (geometric-mean probability of the
    generated tokens).
    """

    def __init__(
        self,
        model: CCExpertForConditionalGeneration,
        processor: PairProcessor,
        model_id: str,
        max_new_tokens: int = 40,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls, model: str | Path, device: str | None = "auto", dtype: str | torch.dtype | None = None
    ) -> "Captioner":
        """Load a model folder, hub id or ``preset:tiny``; fp32 on the CPU, bf16 on CUDA unless ``dtype`` says."""
        target = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = DTYPES[dtype]
        loaded, processor = load_model(model, device=target, dtype=dtype)
        return cls(loaded, processor, model_id=str(model))

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

    def caption(self, pairs: Sequence[PairInput], batch_size: int = 8) -> list[CaptionResult]:
        """Caption (before, after) pairs: images as paths, PIL images or H×W×3 uint8 arrays, any size."""
        results: list[CaptionResult] = []
        for start in range(0, len(pairs), batch_size):
            results.extend(self._caption_batch(pairs[start : start + batch_size]))
        return results

    @torch.inference_mode()
    def _caption_batch(self, pairs: Sequence[PairInput]) -> list[CaptionResult]:
        inputs = self.processor(pairs).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        end_of_turn = self.processor.end_of_turn_id
        with self._capture_change_maps() as change_maps:
            output = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=end_of_turn,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
        generated = output.sequences[:, inputs["input_ids"].shape[1] :]
        # (batch, steps, vocab) → log-probability of each chosen token, from the raw (unprocessed) logits.
        log_probs = torch.stack(output.logits, dim=1).float().log_softmax(dim=-1)
        chosen = log_probs.gather(-1, generated[..., None]).squeeze(-1)
        results = []
        for row, tokens in enumerate(generated.tolist()):
            # The answer runs to the first end-of-turn token (included: it is the model's decision to stop).
            length = tokens.index(end_of_turn) + 1 if end_of_turn in tokens else len(tokens)
            confidence = math.exp(chosen[row, :length].mean().item()) if length else 0.0
            change_map = change_maps[row] if change_maps else None
            results.append(CaptionResult.from_caption(self.processor.decode(tokens[:length]), confidence, change_map))
        return results

    @contextmanager
    def _capture_change_maps(self) -> Iterator[list]:
        """Yield a list that forward passes through the DIM fill with one g×g change map per pair, for models
        with a change-map head (it stays empty otherwise). Only the prompt's pass sees images."""
        maps: list = []
        inner = self.model.model
        if inner.change_head is None:
            yield maps
            return

        def capture(_module, _inputs, output) -> None:
            probabilities = torch.sigmoid(inner.change_head(output.change)[0].float())
            grid = math.isqrt(probabilities.shape[1])
            maps.extend(tuple(tuple(values) for values in row) for row in probabilities.view(-1, grid, grid).tolist())

        handle = inner.dim.register_forward_hook(capture)
        try:
            yield maps
        finally:
            handle.remove()
