"""Evaluation: the published CCExpert-7B numbers, agreement with pycocoevalcap called directly, both input forms."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest

import ccexpert_cli as cli
from ccexpert_core.captions import NO_CHANGE_SENTENCES
from ccexpert_core.data import read_levircc
from ccexpert_core.evaluation import METRICS, read_ccexpert_predictions, read_keyed_predictions

LEVIRCC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "levircc"
PREDICTIONS = LEVIRCC / "ccexpert7b_test_predictions.jsonl"
CAPTIONS = LEVIRCC / "LevirCCcaptions_reconstructed.json"
needs_levircc = pytest.mark.skipif(
    not PREDICTIONS.is_file() or not CAPTIONS.is_file(),
    reason=f"LEVIR-CC reference data not found in {LEVIRCC} (the shared/ folder beside the repository)",
)

PUBLISHED_7B = {"BLEU-4": 65.49, "METEOR": 41.82, "ROUGE-L": 76.55, "CIDEr-D": 143.32, "S*m": 81.80}


def run_cli(argv: list[str]) -> str:
    """Run ``ccexpert`` in-process, expect success, return its stdout (usable from any fixture scope)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def normalised(captions: list[str]) -> list[str]:
    """The published normalisation, written out independently of the code under test."""
    return [" ".join(caption.lower().replace(".", "").split()) for caption in captions]


@pytest.fixture(scope="module")
def published_run() -> dict:
    """The CCExpert-7B test predictions, scored once for the whole module (one JVM)."""
    if not PREDICTIONS.is_file():
        pytest.skip(f"{PREDICTIONS} not found (the shared/ folder beside the repository)")
    return json.loads(run_cli(["evaluate", "--predictions", str(PREDICTIONS)]))


@needs_levircc
def test_reproduces_published_ccexpert_7b_scores(published_run: dict) -> None:
    print("\nCCExpert-7B on LEVIR-CC test, reproduced:\n" + json.dumps(published_run, indent=1))
    for metric, published in PUBLISHED_7B.items():
        assert published_run[metric] == pytest.approx(published, abs=0.05), metric
    # 1,936 lines, 7 of them repeats: each pair counts once.
    assert published_run["pairs"] == 1929
    assert published_run["missing"] == 0 and published_run["allow_missing"] is False


@needs_levircc
def test_output_keys_and_s_star_m(published_run: dict) -> None:
    assert list(published_run) == [*METRICS, "pairs", "change_accuracy", "missing", "allow_missing"]
    four = [published_run[key] for key in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")]
    assert published_run["S*m"] == pytest.approx(sum(four) / 4, abs=1e-12)
    assert 90 < published_run["change_accuracy"] <= 100


@needs_levircc
def test_keyed_predictions_read_the_same_pairs_as_the_json_lines(tmp_path: Path) -> None:
    """File names, imgids (numbers or strings) and uids all key the same pair; references agree with the JSONL's."""
    inline = read_ccexpert_predictions(PREDICTIONS)
    entries = {entry.uid: entry for entry in read_levircc(CAPTIONS)}
    items = []
    for i, (uid, caption) in enumerate(inline.predictions.items()):
        entry = entries[uid]
        key = ({"filename": entry.filename}, {"imgid": entry.imgid}, {"imgid": str(entry.imgid)})[i % 3]
        items.append({**key, ("caption", "pred")[i % 2]: caption})
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps(items))
    keyed = read_keyed_predictions(path, CAPTIONS, "test")
    assert len(keyed.predictions) == len(keyed.references) == 1929
    for uid, caption in inline.predictions.items():
        filename = entries[uid].filename
        assert keyed.predictions[filename] == caption
        assert normalised(list(keyed.references[filename])) == normalised(list(inline.references[uid]))


@needs_levircc
def test_keyed_predictions_with_allow_missing_as_a_table(tmp_path: Path) -> None:
    inline = read_ccexpert_predictions(PREDICTIONS)
    # A JSON object keyed by uid and by file name; predictions of train pairs belong to another split: ignored.
    entries = {entry.uid: entry for entry in read_levircc(CAPTIONS)}
    some = list(inline.predictions.items())[:30]
    keyed = {uid if i % 2 else entries[uid].filename: caption for i, (uid, caption) in enumerate(some)}
    keyed["train_000001.png"] = "there is no difference"
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps(keyed))
    table = run_cli(["evaluate", "--predictions", str(path), "--references", str(CAPTIONS), "--format", "table",
                     "--allow-missing"])
    rows = dict(line.split() for line in table.splitlines())
    assert rows["metric"] == "value"
    assert set(METRICS) <= rows.keys()
    assert (rows["pairs"], rows["missing"], rows["allow_missing"]) == ("30", str(1929 - 30), "yes")


def _generated_set(rng: random.Random) -> tuple[list[dict], dict[str, list[str]], dict[str, str]]:
    """JSON Lines records with repeated uids, case/punctuation variants and a missing prediction, plus the
    clean (already normalised) references and predictions pycocoevalcap should see, each uid once."""
    words = "a road is built many houses trees are removed the at top left bottom right river bridge lot".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))

    def decorate(text: str) -> str:
        variant = rng.choice([str.upper, str.capitalize, str.title, str])(text)
        return variant.replace(" ", rng.choice([" ", "  ", " \t"]), 1) + rng.choice(["", ".", " .", "..."])

    records, references, predictions = [], {}, {}
    for i in range(60):
        uid = f"pair{i}"
        refs = list(NO_CHANGE_SENTENCES) if i % 4 == 0 else [sentence() for _ in range(rng.randint(1, 5))]
        pred = rng.choice(NO_CHANGE_SENTENCES) if i % 5 == 0 else sentence()
        pred = "" if i == 7 else pred
        references[uid] = refs
        record = {"uid": uid, "pred": decorate(pred) if pred else ".", "change_caption": [decorate(r) for r in refs]}
        if i == 11:
            record["pred"] = None  # no prediction for this pair
        else:
            predictions[uid] = pred
        records.append(record)
        if i % 9 == 0:
            records.append(dict(record))  # padding-style repeat: must count once
    rng.shuffle(records)
    return records, references, predictions


def test_matches_pycocoevalcap_called_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    records, references, predictions = _generated_set(random.Random(1234))
    path = tmp_path / "generated.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    starts = []
    original_init = Meteor.__init__

    def counting_init(self: Meteor) -> None:
        starts.append(self)
        original_init(self)

    monkeypatch.setattr(Meteor, "__init__", counting_init)
    ours = json.loads(run_cli(["evaluate", "--predictions", str(path), "--allow-missing"]))
    assert len(starts) == 1, "one JVM per evaluation, not one per pair"
    monkeypatch.undo()

    gts = {uid: references[uid] for uid in predictions}
    res = {uid: [predictions[uid]] for uid in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:
        del meteor  # pycocoevalcap stops its JVM when the scorer is collected
    expected = {f"BLEU-{n}": 100 * b for n, b in enumerate(bleu, start=1)}
    expected["METEOR"] = 100 * meteor_score
    expected["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    expected["CIDEr-D"] = 100 * Cider().compute_score(gts, res)[0]
    expected["S*m"] = (expected["BLEU-4"] + expected["METEOR"] + expected["ROUGE-L"] + expected["CIDEr-D"]) / 4
    for metric in METRICS:
        assert ours[metric] == pytest.approx(expected[metric], rel=1e-12, abs=1e-12), metric

    no_change = set(NO_CHANGE_SENTENCES)
    right = sum((predictions[uid] in no_change) == all(r in no_change for r in references[uid]) for uid in predictions)
    assert ours["change_accuracy"] == pytest.approx(100 * right / len(predictions))
    assert (ours["pairs"], ours["missing"], ours["allow_missing"]) == (59, 1, True)
