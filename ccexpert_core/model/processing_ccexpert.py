"""Turns pairs of images (and captions, for training) into CCExpert's model inputs.

Each image: plain bicubic resize to the vision tower's size (384×384), kept as uint8; :func:`normalize_pixels`
scales to [0, 1] and normalises with mean = std = 0.5 (SigLIP) on the model's device, right before the vision tower
(the model calls it), so a quarter of the bytes cross to the device and no float work is done on the CPU. The prompt
is the reference's, in Qwen's ChatML; each ``<image>`` becomes that image's N tokens (729 at 384 px / patch 14), with
no newline token; it is the same for every pair, so its ids are built once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from ccexpert_core.errors import CCExpertError
from ccexpert_core.model.tokenizer import IM_END, IMAGE_TOKEN

log = logging.getLogger(__name__)

ImageInput = Image.Image | np.ndarray | str | Path
PairInput = tuple[ImageInput, ImageInput]

SYSTEM_PROMPT = "You are a helpful assistant."
QUESTION = (
    f"This is the Image1 {IMAGE_TOKEN}. This is the second Image2 {IMAGE_TOKEN}.\n"
    "What difference happened from Image1 to Image2?"
)
IMAGE_MEAN = IMAGE_STD = 0.5


def normalize_pixels(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (n, 3, H, W) → the vision tower's input in ``dtype``: x / 255, then (x − mean) / std, in float32 on
    ``pixels``' device (so the values are those of a float32 CPU normalisation, whatever the device), then cast."""
    return ((pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD).to(dtype)


def chat_prompt(question: str = QUESTION) -> str:
    """The ChatML text up to the start of the assistant's answer."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}{IM_END}\n"
        f"<|im_start|>user\n{question}{IM_END}\n"
        "<|im_start|>assistant\n"
    )


def load_rgb(image: ImageInput) -> Image.Image:
    """Any supported image input as an RGB PIL image; one-band and RGBA images are converted, with a note.

    Raises CCExpertError for a missing or unreadable file and for arrays that are not H×W, H×W×1/3/4.
    """
    name = "image array"
    if isinstance(image, (str, Path)):
        name = str(image)
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except FileNotFoundError:
            raise CCExpertError(f"image not found: {name}") from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise CCExpertError(f"cannot read image {name}: {error}. Give a PNG, JPEG or TIFF image.") from None
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image)
    elif not isinstance(image, Image.Image):
        raise CCExpertError(f"unsupported image input of type {type(image).__name__}: give a path, PIL image or array")
    if image.mode != "RGB":
        if image.mode not in ("L", "LA", "P", "RGBA", "I;16", "I", "F", "1", "CMYK", "YCbCr"):
            raise CCExpertError(f"{name}: unsupported image mode {image.mode}")
        log.warning("note: %s is %s, converted to RGB", name, _describe_mode(image.mode))
        image = _to_rgb(image)
    return image


def _describe_mode(mode: str) -> str:
    return {"L": "one-band", "LA": "one-band with alpha", "RGBA": "RGBA (alpha dropped)", "P": "palette"}.get(
        mode, f"mode {mode}"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I", "F"):
        # 16-bit or float data: a plain cast would clip; stretch the image's own range to 8 bits.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    return image.convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise CCExpertError(f"an image array must be H×W, H×W×1, H×W×3 or H×W×4; got shape {array.shape}")
    if array.dtype != np.uint8:
        raise CCExpertError(f"an image array must be uint8 (0..255); got {array.dtype}. Map it to 8 bits first.")
    return Image.fromarray(np.ascontiguousarray(array))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Tiles already at the model's size (the usual case in region runs) skip a resampling that changes nothing.
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


class PairProcessor:
    """Prompt and pixels for pairs of images: ``processor(pairs)`` gives model inputs for generation,
    ``processor(pairs, answers=captions)`` gives inputs with ``labels`` for training (answer + end of turn)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_size: int = 384, tokens_per_image: int = 729) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.tokens_per_image = tokens_per_image
        # One token: one id (convert_tokens_to_ids is typed for a list of tokens too); None where the tokenizer has
        # no such token.
        self.image_token_id = cast("int | None", tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.end_of_turn_id = cast(int, tokenizer.convert_tokens_to_ids(IM_END))
        unknown = tokenizer.unk_token_id
        if self.image_token_id is None or (unknown is not None and self.image_token_id == unknown):
            raise CCExpertError(f"the tokenizer has no {IMAGE_TOKEN} token: is this a LLaVA-OneVision tokenizer?")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._prompt_ids = self._expand_images(tokenizer(chat_prompt(), add_special_tokens=False)["input_ids"])
        self._prompt_row = torch.tensor([self._prompt_ids])

    @classmethod
    def from_pretrained(cls, path: str | Path, image_size: int, tokens_per_image: int) -> "PairProcessor":
        """The processor of a model folder (its tokenizer) for the model's image size and tokens per image."""
        return cls(AutoTokenizer.from_pretrained(str(path)), image_size, tokens_per_image)

    @property
    def prompt(self) -> str:
        """The prompt text (with one ``<image>`` per image)."""
        return chat_prompt()

    def _expand_images(self, ids: list[int]) -> list[int]:
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * self.tokens_per_image if token == self.image_token_id else [token])
        return expanded

    def pixel_values(self, images: Sequence[ImageInput], pin_memory: bool = False) -> torch.Tensor:
        """(len(images), 3, S, S) uint8, contiguous, each image written once into the batch (in page-locked memory
        with ``pin_memory``, for a non-blocking copy to a GPU). The model normalises them (:func:`normalize_pixels`).
        """
        size = self.image_size
        batch = torch.empty((len(images), 3, size, size), dtype=torch.uint8, pin_memory=pin_memory)
        rows = batch.numpy()
        for row, image in zip(rows, images, strict=True):
            row[...] = np.asarray(_resized(load_rgb(image), (size, size))).transpose(2, 0, 1)
        return batch

    def prompt_ids(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The generation prompt's (input_ids, attention_mask) for ``rows`` pairs: the one prompt, repeated (a view:
        no row is built per pair)."""
        ids = self._prompt_row.expand(rows, -1)
        return ids, torch.ones_like(self._prompt_row).expand(rows, -1)

    def __call__(self, pairs: Sequence[PairInput], answers: Sequence[str] | None = None) -> BatchFeature:
        """Model inputs for a batch of (before, after) pairs; with ``answers``, also ``labels``.

        Every generation prompt is the same (no padding); training inputs are right-padded and their labels are
        -100 except on the answer's tokens and the end-of-turn token. ``pixel_values`` are uint8 (see
        :meth:`pixel_values`).
        """
        if not pairs:
            raise CCExpertError("no image pairs given")
        if answers is not None and len(answers) != len(pairs):
            raise ValueError(f"{len(pairs)} pairs but {len(answers)} answers")
        images = [image for pair in pairs for image in pair]
        if answers is None:
            input_ids, attention = self.prompt_ids(len(pairs))
            return BatchFeature({"input_ids": input_ids, "attention_mask": attention,
                                 "pixel_values": self.pixel_values(images)})
        sequences, label_rows = [], []
        for answer_text in answers:
            answer = self.tokenizer(answer_text, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]
            sequences.append(self._prompt_ids + answer)
            label_rows.append([-100] * len(self._prompt_ids) + answer)
        width = max(map(len, sequences))
        input_ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), -100, dtype=torch.long)
        for row, (ids, lab) in enumerate(zip(sequences, label_rows)):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(lab)
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                             "pixel_values": self.pixel_values(images)})

    def decode(self, token_ids: list[int]) -> str:
        """The caption text of generated token ids (special tokens skipped, as the reference decodes)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return cast(str, text).strip()  # one sequence decodes to one string (a list of them, to a list)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tokenizer files next to a model."""
        self.tokenizer.save_pretrained(str(path))
