"""GPU check: the 0.5B-shaped CCExpert with random weights in bf16 — pairs/s at batch 1, 8 and 32 with a fixed
20-token answer, peak GPU memory, and the time split between vision tower, DIM and language model.

Run on a GPU machine through bench/gpu_check.sh. Random weights: speed and memory only, never captions.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
import torch

from ccexpert_core.model import CCExpertForConditionalGeneration, PairProcessor, preset_config
from ccexpert_core.model.tokenizer import IMAGE_TOKEN, build_word_tokenizer

ANSWER_TOKENS = 20


def build(device: torch.device) -> tuple[CCExpertForConditionalGeneration, PairProcessor]:
    tokenizer = build_word_tokenizer()
    config = preset_config("0.5b", image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    with torch.device("meta"):
        model = CCExpertForConditionalGeneration(config)
    model = model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    model = model.to(torch.bfloat16).eval()
    return model, PairProcessor(tokenizer, config.vision_config.image_size, config.tokens_per_image)


class StageTimer:
    """CUDA-event timing of the vision tower, the DIM and the language model (all calls, summed)."""

    def __init__(self, model: CCExpertForConditionalGeneration) -> None:
        self.events: dict[str, list] = defaultdict(list)
        inner = model.model
        for name, module in (("vision", inner.vision_tower), ("dim", inner.dim), ("language", inner.language_model)):
            module.register_forward_pre_hook(lambda *_, n=name: self._mark(n, "start"))
            module.register_forward_hook(lambda *_, n=name: self._mark(n, "end"))

    def _mark(self, name: str, which: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events[name].append((which, event))

    def reset(self) -> None:
        self.events.clear()

    def seconds(self) -> dict[str, float]:
        torch.cuda.synchronize()
        totals = {}
        for name, marks in self.events.items():
            starts = [e for w, e in marks if w == "start"]
            ends = [e for w, e in marks if w == "end"]
            totals[name] = sum(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1000
        return totals


@torch.inference_mode()
def run_batch(model, processor, pairs) -> None:
    inputs = processor(pairs).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    model.generate(
        **inputs, do_sample=False, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS,
        pad_token_id=processor.tokenizer.pad_token_id,
    )


def main() -> None:
    device = torch.device("cuda")
    model, processor = build(device)
    timer = StageTimer(model)
    rng = np.random.default_rng(0)
    results = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "answer_tokens": ANSWER_TOKENS, "batches": {}}
    for batch in (1, 8, 32):
        pairs = [tuple(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8) for _ in range(2)) for _ in range(batch)]
        run_batch(model, processor, pairs)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        timer.reset()
        repeats = max(2, 32 // batch)
        start = time.perf_counter()
        for _ in range(repeats):
            run_batch(model, processor, pairs)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        split = timer.seconds()
        results["batches"][batch] = {
            "pairs_per_s": round(batch * repeats / elapsed, 2),
            "seconds_per_batch": round(elapsed / repeats, 4),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "time_split_s_per_batch": {k: round(v / repeats, 4) for k, v in split.items()},
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
