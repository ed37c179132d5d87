"""The Captioner: batching, confidence, the no-change decision, its three steps (prepare / generate / finish) and
who runs them, ids the tokenizer cannot decode, answers that are no caption."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ccexpert_core.captions import CaptionResult, is_no_change, normalize_caption
from ccexpert_core.defaults import DEMO_MODEL_DIR
from ccexpert_core.errors import CCExpertError
from ccexpert_core.inference import Captioner, CaptionError, Generated, PreparedWork
from ccexpert_core.model import build_tiny_model
from ccexpert_core.series import TileWork


@pytest.fixture(scope="module")
def captioner(tiny_model_dir: Path) -> Captioner:
    captioner = Captioner.load(tiny_model_dir, device="cpu")
    # Enough tokens to tell answers apart: the tiny model never stops by itself, and 40 tokens cost seconds a pair.
    captioner.max_new_tokens = 8
    return captioner


def pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(42)
    sizes = [(256, 256), (384, 384), (100, 180), (512, 300), (256, 256)]
    return [
        (rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8), rng.integers(0, 256, (*sizes[i % 5], 3), dtype=np.uint8))
        for i in range(count)
    ]


def test_batched_and_one_at_a_time_captions_are_identical(captioner: Captioner) -> None:
    inputs = pairs(5)
    batched = captioner.caption(inputs, batch_size=4)
    single = [captioner.caption([pair], batch_size=1)[0] for pair in inputs]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert [r.confidence for r in batched] == pytest.approx([r.confidence for r in single], rel=1e-4)


def test_results_carry_caption_change_flag_and_confidence(captioner: Captioner, levircc_pair) -> None:
    [result] = captioner.caption([levircc_pair])
    assert isinstance(result, CaptionResult)
    assert 0.0 < result.confidence <= 1.0
    assert result.change_detected == (not is_no_change(result.caption))
    assert captioner.tile_size == 384 and "<image>" in captioner.prompt


def test_no_change_decision_follows_levir_cc_sentences() -> None:
    assert is_no_change("There is no difference .")
    assert is_no_change("the two scenes seem identical")
    assert not is_no_change("two buildings have been built at the top")
    assert normalize_caption("  The scene is the same as before. ") == "the scene is the same as before"
    assert CaptionResult.from_caption("no change has occurred", 0.9).change_detected is False


def test_empty_input_gives_no_results(captioner: Captioner) -> None:
    assert captioner.caption([]) == []


def full_logits_results(captioner: Captioner, inputs: list) -> list[tuple[str, float]]:
    """(caption, confidence) as the Captioner computed them before it stopped keeping logits: generate with every
    step's (batch, vocabulary) logits, log-softmax over the ids it may generate, the chosen tokens' values up to the
    first end of turn."""
    batch = captioner.processor(inputs)
    end_of_turn = captioner.processor.end_of_turn_id
    with torch.no_grad():
        output = captioner.model.generate(
            **batch, do_sample=False, num_beams=1, max_new_tokens=captioner.max_new_tokens, eos_token_id=end_of_turn,
            pad_token_id=captioner.processor.tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True,
        )
    generated = output.sequences[:, batch["input_ids"].shape[1] :]
    logits = torch.stack(output.logits, dim=1).float().masked_fill(captioner.never_generated, float("-inf"))
    chosen = logits.log_softmax(-1).gather(-1, generated[..., None])[..., 0]
    results = []
    for row, tokens in enumerate(generated.tolist()):
        length = tokens.index(end_of_turn) + 1 if end_of_turn in tokens else len(tokens)
        results.append((captioner.processor.decode(tokens[:length]), math.exp(chosen[row, :length].mean().item())))
    return results


@pytest.fixture(scope="module")
def demo_captioner() -> Captioner:
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("no demo model in ccexpert_core/demo_model")
    return Captioner.load(DEMO_MODEL_DIR, device="cpu")


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_confidence_equals_the_full_logits_computation(model: str, request: pytest.FixtureRequest) -> None:
    # The tiny model never stops early; the demo model ends its turn, so the answer's cut is checked too.
    captioner = request.getfixturevalue("captioner" if model == "tiny" else "demo_captioner")
    inputs = pairs(3)
    expected = full_logits_results(captioner, inputs)
    results = captioner.caption(inputs, batch_size=3)
    assert [r.caption for r in results] == [caption for caption, _ in expected]
    assert [r.confidence for r in results] == pytest.approx([confidence for _, confidence in expected], abs=1e-5)


def test_generation_keeps_no_per_step_logits(captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    generate = captioner.model.generate

    def spy(*args, **kwargs):
        output = generate(*args, **kwargs)
        seen.append((kwargs, output))
        return output

    monkeypatch.setattr(captioner.model, "generate", spy)
    captioner.caption(pairs(2))
    [(kwargs, output)] = seen
    assert not any(kwargs.get(flag) for flag in ("output_logits", "output_scores", "return_dict_in_generate"))
    assert isinstance(output, torch.Tensor)  # the token ids alone: no (batch, steps, vocabulary) scores came back


def test_only_generate_runs_the_model_and_the_three_steps_on_other_threads_give_what_caption_gives(
    captioner: Captioner,
) -> None:
    inputs = [TileWork.pair(*pair) for pair in pairs(3)]
    model_threads: list[str] = []
    handle = captioner.model.register_forward_pre_hook(lambda *_: model_threads.append(threading.current_thread().name))
    try:
        # As a server does: batch N+1 prepared and batch N-1 finished on other threads while batch N generates.
        with ThreadPoolExecutor(1, thread_name_prefix="prepare") as preparing, \
                ThreadPoolExecutor(1, thread_name_prefix="model") as model, \
                ThreadPoolExecutor(1, thread_name_prefix="finish") as finishing:
            prepared = [preparing.submit(captioner.prepare, batch) for batch in (inputs[:2], inputs[2:])]
            assert all(isinstance(p.result(), PreparedWork) for p in prepared) and not model_threads
            answers = [model.submit(captioner.generate, p.result()) for p in prepared]
            assert all(isinstance(a.result(), Generated) for a in answers)
            calls = len(model_threads)
            results = [finishing.submit(captioner.finish, a.result()).result() for a in answers]
    finally:
        handle.remove()
    assert calls and len(model_threads) == calls  # finishing ran no model
    assert {name.split("_")[0] for name in model_threads} == {"model"}
    assert [tile for batch in results for tile in batch] == captioner.caption_work(inputs, batch_size=2)
    assert [r[0] for batch in results for r in batch] == captioner.caption(pairs(3), batch_size=2)


def test_the_prompt_is_built_once_and_pixels_travel_as_uint8(captioner: Captioner) -> None:
    prepared = captioner.prepare([TileWork.pair(*pair) for pair in pairs(3)])
    assert prepared.pixel_values.dtype == torch.uint8 and prepared.pixel_values.shape == (6, 3, 384, 384)
    assert prepared.pixel_values.is_contiguous()
    # One prompt row, repeated: no per-pair tensor was built for it.
    assert prepared.input_ids.stride(0) == 0 and prepared.attention_mask.stride(0) == 0
    assert torch.equal(prepared.input_ids[0], prepared.input_ids[2])


def test_uint8_pixels_normalised_on_the_device_caption_as_the_float_path_did(request: pytest.FixtureRequest) -> None:
    demo = request.getfixturevalue("demo_captioner")
    prepared = demo.prepare([TileWork.pair(*pair) for pair in pairs(3)])
    # Today's float path: normalised in float32 on the CPU before the model (the vision tower takes floats as they are).
    floats = replace(prepared, pixel_values=(prepared.pixel_values.float() / 255.0 - 0.5) / 0.5)
    on_device, on_cpu = demo.generate(prepared), demo.generate(floats)
    assert torch.equal(on_device.sequences, on_cpu.sequences)
    torch.testing.assert_close(on_device.log_probs, on_cpu.log_probs)
    assert demo.finish(on_device) == demo.finish(on_cpu)


def test_prepare_of_no_tiles_says_so(captioner: Captioner) -> None:
    with pytest.raises(CCExpertError, match="no images"):
        captioner.prepare([])


def test_generation_never_chooses_an_id_the_tokenizer_cannot_decode() -> None:
    # A checkpoint whose output layer has rows beyond its tokenizer (a converter's padding), made to dominate: the
    # rows past the tokenizer and the image placeholder get +1e4 on every step's logits.
    model, processor = build_tiny_model(seed=3)
    decodable = len(processor.tokenizer)
    model.resize_token_embeddings(decodable + 8)
    banned = [*range(decodable, decodable + 8), processor.image_token_id]

    def dominate(_module, _inputs, logits):
        boosted = logits.clone()
        boosted[..., banned] += 1e4
        return boosted

    model.get_output_embeddings().register_forward_hook(dominate)
    captioner = Captioner(model, processor, model_id="padded", max_new_tokens=6)
    prepared = captioner.prepare([TileWork.pair(*pair) for pair in pairs(2)])
    # Without the rule, greedy decoding takes the dominating rows.
    with torch.inference_mode():
        unguarded = model.generate(
            input_ids=prepared.input_ids, attention_mask=prepared.attention_mask,
            pixel_values=prepared.pixel_values, max_new_tokens=3, do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )[:, prepared.input_ids.shape[1]:]
    assert set(unguarded.flatten().tolist()) <= set(banned)
    answer = captioner.generate(prepared)
    generated = set(answer.sequences.flatten().tolist())
    assert generated and not generated & set(banned) and max(generated) < decodable
    assert all(result.caption for [result] in captioner.finish(answer))


def broken_captioner(weight: float) -> Captioner:
    """A tiny model whose final norm is scaled by ``weight``: 0 makes every score equal (greedy then takes token 0,
    the padding, which decodes to nothing), NaN makes every score NaN."""
    model, processor = build_tiny_model(seed=1)
    with torch.no_grad():
        model.model.language_model.norm.weight.fill_(weight)
    return Captioner(model, processor, model_id="broken", max_new_tokens=3)


def test_scores_that_are_not_finite_raise_instead_of_giving_a_caption() -> None:
    with pytest.raises(CaptionError, match="not finite"):
        broken_captioner(float("nan")).caption(pairs(2))


def test_an_empty_answer_raises_instead_of_giving_a_caption() -> None:
    with pytest.raises(CaptionError, match="empty"):
        broken_captioner(0.0).caption(pairs(1))
