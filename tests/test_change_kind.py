"""The kind of change read from a caption's words (the ``change_kind`` field), for any model."""

from __future__ import annotations

import json

import pytest

from ccexpert_core.captions import CHANGE_KINDS, CaptionResult, change_kind, is_no_change

from conftest import LEVIRCC, require_shared


@pytest.mark.parametrize(
    "caption, kind",
    [
        ("two buildings have been built at the top right .", "buildings"),
        ("some vitals are constructed by the roadside", "buildings"),
        ("the houses at the bottom were demolished", "demolition"),
        ("a road has been built beside the houses", "roads"),
        ("the trees on the left have been cleared", "vegetation"),
        ("some plants have been replaced by a golf course", "vegetation"),
        ("a pond appears in the middle", "water"),
        ("the bare land is now covered", "bare land"),
        ("there is no difference .", None),
        ("some vehicles appear at the bottom", None),
    ],
)
def test_the_first_subject_named_decides_the_kind(caption: str, kind: str | None) -> None:
    assert change_kind(caption) == kind
    assert kind is None or kind in CHANGE_KINDS


def test_nearly_every_changed_levircc_caption_gets_a_kind() -> None:
    captions = require_shared(LEVIRCC / "LevirCCcaptions_reconstructed.json")
    changed = [s["raw"] for image in json.loads(captions.read_text())["images"] for s in image["sentences"]
               if not is_no_change(s["raw"])]
    kinds = [change_kind(caption) for caption in changed]
    assert sum(kind is not None for kind in kinds) / len(kinds) > 0.98
    assert {kind for kind in kinds if kind} == set(CHANGE_KINDS)


def test_a_model_that_tells_kinds_is_believed_over_the_words() -> None:
    result = CaptionResult.from_caption("two buildings have been built", 0.9, model_kind="road_widened")
    assert result.change_kind == "roads"
    assert CaptionResult.from_caption("two buildings have been built", 0.9).change_kind == "buildings"
    assert CaptionResult.from_caption("there is no difference", 0.9, model_kind="road_built").change_kind is None


def test_the_demo_model_tells_the_kind_from_its_change_summary() -> None:
    from ccexpert_core.data import read_cc_json
    from ccexpert_core.data.synthetic import write_dataset
    from ccexpert_core.defaults import DEMO_MODEL_DIR
    from ccexpert_core.inference import Captioner

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    import tempfile

    captioner = Captioner.load(DEMO_MODEL_DIR, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        pairs = [p for p in read_cc_json(write_dataset(folder, 24, seed=4242)) if p.changed][:8]
        results = captioner.caption([(p.before_path, p.after_path) for p in pairs], batch_size=8)
    from ccexpert_core.captions import MODEL_KINDS

    right = sum(r.change_kind == MODEL_KINDS[p.change_type] for p, r in zip(pairs, results))
    assert right >= 6, [(p.change_type, r.caption, r.change_kind) for p, r in zip(pairs, results)]
