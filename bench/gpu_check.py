"""GPU check: the Captioner at the 0.5B shape, bf16, random weights, the real vocabulary and the real prompt.

Per batch size (1, 8, 32, 64): pairs/s, peak GPU memory, and each batch's time split into preprocessing (the
processor on the CPU: ``Captioner.prepare``, uint8 pixels in page-locked memory), the pixels' preparation on the
device (copy and normalisation, measured apart), vision tower, DIM, projector + prefill, decoding, the rest
(generate's setup) and finishing (tokens to captions on the CPU: ``Captioner.finish``). Then one series of 4 dates per tile through ``caption_series`` against its 3
intervals as pairs. Every answer is ``--answer-tokens`` long: random weights never end their turn.

On a GPU machine run it through bench/gpu_check.sh (its header says how). ``--smoke`` runs the same code with the
small demo shape on the CPU in seconds (tests/test_captioner_gpu_check.py), so the script is known to work before a GPU
ever sees it. Random weights: speed and memory only, never captions.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import cast

import numpy as np
import torch
import transformers
from transformers import PreTrainedTokenizerFast

from ccexpert_core.inference import Captioner
from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor, preset_config
from ccexpert_core.model.processing_ccexpert import normalize_pixels
from ccexpert_core.model.tokenizer import IMAGE_TOKEN, build_word_tokenizer
from ccexpert_core.series import TileWork

#: Qwen2's 151,936 embedding rows plus the image token (llava-hf pads its checkpoints to 152,000: the same cost).
REAL_VOCABULARY = 151_936 + 1
SERIES_DATES = 4


def real_size_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """The word-level tokenizer (the real prompt's words) grown with filler words to ``size`` entries, so the
    embeddings and the language-model head have the real vocabulary's rows and every generated id decodes."""
    base = len(build_word_tokenizer())
    tokenizer = build_word_tokenizer([" ".join(f"w{index}" for index in range(max(0, size - base)))])
    if len(tokenizer) != max(size, base):
        raise RuntimeError(f"the filler tokenizer has {len(tokenizer)} entries, not {size}")
    return tokenizer


def build(shape: str, device: torch.device, dtype: torch.dtype, vocabulary: int, answer_tokens: int) -> Captioner:
    """A ``shape`` preset laid out on the meta device, then materialised on ``device`` (``to_empty``) and given
    fresh random weights there: no checkpoint, no download, no full-size copy on the CPU."""
    tokenizer = real_size_tokenizer(vocabulary)
    config = preset_config(
        shape, vocab_size=len(tokenizer), image_token_index=cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    )
    with torch.device("meta"):
        model = CCExpertForConditionalGeneration(config)
    model = model.to_empty(device=device)
    torch.manual_seed(0)
    # The library's initialisation, buffers included (rotary frequencies, position ids), which to_empty leaves
    # as whatever the memory held.
    model.init_weights()
    # transformers wraps PreTrainedModel.to in functools.wraps, which typeshed types as no method (no self)
    model = model.to(dtype).eval()  # type: ignore[arg-type]
    processor = PairProcessor(tokenizer, config.vision_config.image_size, config.tokens_per_image)
    return Captioner(model, processor, model_id=f"random {shape}", max_new_tokens=answer_tokens)


class StageClock:
    """Marks the start and end of the vision tower, the DIM, the projector and every forward pass of the whole
    model (the first of a generation is the prefill) with CUDA events on a GPU, wall time on a CPU."""

    def __init__(self, model: CCExpertForConditionalGeneration, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, list] = defaultdict(list)
        inner = model.model
        modules = {"vision": inner.vision_tower, "dim": inner.dim, "projector": inner.multi_modal_projector,
                   "forward": model}
        for name, module in modules.items():
            if module is not None:
                module.register_forward_pre_hook(lambda *_, n=name: self.mark(n + ".start"))
                module.register_forward_hook(lambda *_, n=name: self.mark(n + ".end"))

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name].append(event)
        else:
            self.marks[name].append(time.perf_counter())

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def split(self) -> dict[str, float]:
        """Seconds per stage over the marks since the last split (one generation between ``batch.start`` and
        ``batch.end``); forgets them."""
        if self.cuda:
            torch.cuda.synchronize()
        m = self.marks

        def total(name: str) -> float:
            return sum(self._seconds(s, e) for s, e in zip(m[name + ".start"], m[name + ".end"], strict=True))

        vision, dim, projector = total("vision"), total("dim"), total("projector")
        prefill = self._seconds(m["forward.start"][0], m["forward.end"][0])
        decoding = self._seconds(m["forward.end"][0], m["batch.end"][0])
        other = self._seconds(m["batch.start"][0], m["forward.start"][0]) - vision - dim - projector
        self.marks = defaultdict(list)
        return {
            "vision_tower_s": vision, "dim_s": dim, "projector_and_prefill_s": projector + prefill,
            "decoding_s": decoding, "other_s": other,
        }


def random_images(rng: np.random.Generator, count: int, size: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_preparation_s(captioner: Captioner, pixels: torch.Tensor) -> float:
    """Seconds to copy a prepared batch's uint8 pixels to the model's device and normalise them there (what
    ``generate`` does first), measured apart (CUDA events on a GPU)."""
    device = captioner.device
    sync(device)
    if device.type != "cuda":
        began = time.perf_counter()
        normalize_pixels(pixels.to(device), captioner.dtype)
        return time.perf_counter() - began
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    normalize_pixels(pixels.to(device, non_blocking=True), captioner.dtype)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def measure_batch(captioner: Captioner, clock: StageClock, pairs: list, repeats: int) -> dict:
    """pairs/s, peak memory and the mean split of ``repeats`` batches, prepared, generated and finished one after
    the other."""
    device = captioner.device
    work = [TileWork.pair(before, after) for before, after in pairs]
    clock.mark("batch.start")
    captioner.finish(captioner.generate(captioner.prepare(work)))  # warm-up
    clock.mark("batch.end")
    clock.split()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    splits: list[dict[str, float]] = []
    start = time.perf_counter()
    for _ in range(repeats):
        began = time.perf_counter()
        prepared = captioner.prepare(work)
        preprocessing = time.perf_counter() - began
        clock.mark("batch.start")
        answer = captioner.generate(prepared)
        clock.mark("batch.end")
        began = time.perf_counter()
        captioner.finish(answer)
        finishing = time.perf_counter() - began
        splits.append({"preprocessing_s": preprocessing, **clock.split(), "finishing_s": finishing})
    elapsed = time.perf_counter() - start
    mean = {key: round(sum(s[key] for s in splits) / repeats, 4) for key in splits[0]}
    mean["device_preparation_s"] = round(device_preparation_s(captioner, prepared.pixel_values), 4)
    model_seconds = elapsed / repeats - mean["preprocessing_s"] - mean["finishing_s"]
    return {
        "pairs_per_s": round(len(pairs) * repeats / elapsed, 2),
        # What a caller that prepares batch N+1 and finishes batch N-1 while batch N runs gets (the backend does).
        "pairs_per_s_model_only": round(len(pairs) / model_seconds, 2),
        "seconds_per_batch": round(elapsed / repeats, 4),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "split_s_per_batch": mean,
    }


def measure_series(captioner: Captioner, rng: np.random.Generator, tiles: int, size: int) -> dict:
    """Tiles of 4 dates: ``caption_series`` (each image through the tower once) against the 3 consecutive intervals
    as pairs, one model batch each way."""
    series = [random_images(rng, SERIES_DATES, size) for _ in range(tiles)]
    pairs = [(tile[i], tile[i + 1]) for tile in series for i in range(SERIES_DATES - 1)]
    images: list[int] = []
    handle = captioner.model.model.vision_tower.register_forward_pre_hook(
        lambda _module, args: images.append(args[0].shape[0])
    )
    try:
        timings = {}
        for name, run in (("series", lambda: captioner.caption_series(series, batch_size=len(pairs))),
                          ("pairs", lambda: captioner.caption(pairs, batch_size=len(pairs)))):
            run()  # warm-up
            sync(captioner.device)
            images.clear()
            start = time.perf_counter()
            run()
            sync(captioner.device)
            timings[name] = (time.perf_counter() - start, sum(images) / tiles)
    finally:
        handle.remove()
    return {
        "tiles": tiles,
        "dates": SERIES_DATES,
        "series_s": round(timings["series"][0], 4),
        "pairs_s": round(timings["pairs"][0], 4),
        "tower_images_per_tile": {"series": timings["series"][1], "pairs": timings["pairs"][1]},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="0.5b", help="a preset: 0.5b (the paper's), 7b, tiny, demo")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--answer-tokens", type=int, default=20)
    parser.add_argument("--pairs-per-size", type=int, default=64, help="pairs captioned per batch size (≥ 2 batches)")
    parser.add_argument("--series-tiles", type=int, default=16)
    parser.add_argument("--vocabulary", type=int, default=REAL_VOCABULARY)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="demo shape on the CPU, fp32, small batches: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        # The demo shape (144 tokens per image, a change-map head): every code path of the check in seconds.
        args.device, args.shape, args.dtype, args.batches, args.answer_tokens = "cpu", "demo", "float32", [1, 2], 2
        args.pairs_per_size, args.series_tiles = 2, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the check; print its JSON and return it."""
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    captioner = build(args.shape, device, dtype, args.vocabulary, args.answer_tokens)
    clock = StageClock(captioner.model, device)
    rng = np.random.default_rng(0)
    size = captioner.tile_size
    prompt_tokens = captioner.prepare([TileWork(tuple(random_images(rng, 2, size)))]).input_ids.shape[1]
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "shape": args.shape,
        "dtype": args.dtype,
        "vocabulary": captioner.model.config.text_config.vocab_size,
        "prompt_tokens": prompt_tokens,
        "answer_tokens": args.answer_tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "batches": {},
    }
    for batch in args.batches:
        pairs = [tuple(random_images(rng, 2, size)) for _ in range(batch)]
        repeats = max(2, args.pairs_per_size // batch)
        results["batches"][str(batch)] = measure_batch(captioner, clock, pairs, repeats)
    results["series"] = measure_series(captioner, rng, args.series_tiles, size)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
