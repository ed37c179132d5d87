"""A small word-level tokenizer for models built here (presets, the demo model): no tokenizer can be downloaded.

Real checkpoints bring their own (Qwen2's BPE with ``<image>`` added by llava-hf); the processor treats both alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ccexpert_core.captions import NO_CHANGE_SENTENCES

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
UNKNOWN_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, UNKNOWN_TOKEN)

#: Words of the ChatML frame and of the prompt (see :mod:`ccexpert_core.model.processing_ccexpert`).
PROMPT_WORDS = (
    "system user assistant You are a helpful assistant . This is the Image1 second Image2 "
    "What difference happened from to ?"
).split()

#: A base vocabulary of change captions in LEVIR-CC's style, so an untrained preset can say something readable.
CAPTION_WORDS = (
    "a an the some many several one two three four five six seven eight nine ten no many lots of row rows "
    "building buildings house houses villa villas road roads street tree trees grass bare land water pond lake "
    "river parking lot lots playground square field fields area scene scenes image images "
    "has have been is are was were built constructed removed demolished appeared disappeared replaced cleared "
    "added widened paved turned into changed change changes difference identical same before seem occurred "
    "almost nothing there at in on of and with near next by along to from top bottom left right upper lower "
    "corner corners centre center middle side edge up down across between behind beside large small big new "
    "old more less few green empty"
).split()


def build_word_tokenizer(extra_texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the prompt, the no-change sentences, a caption vocabulary and ``extra_texts``.

    ``<image>`` is a special token of its own (the model's ``image_token_index``); ``<|im_end|>`` ends a turn.
    """
    splitter = pre_tokenizers.Whitespace()
    words: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for text in (*PROMPT_WORDS, *CAPTION_WORDS, *NO_CHANGE_SENTENCES, *extra_texts):
        for piece, _ in splitter.pre_tokenize_str(text):
            words.setdefault(piece)
            words.setdefault(piece.lower())
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN_TOKEN))
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNKNOWN_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, IMAGE_TOKEN],
    )
    tokenizer.padding_side = "left"
    return tokenizer
