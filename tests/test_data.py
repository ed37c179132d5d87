"""Datasets: LEVIR-CC's original layout, CC JSON, YAML mixtures, flatten / random choice, converter, dataset-info."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import ccexpert_cli as cli
from ccexpert_core.captions import NO_CHANGE_SENTENCES
from ccexpert_core.data import (
    PairSample,
    SamplingStrategy,
    flatten,
    levircc_pairs,
    load_mixture,
    random_choice,
    read_cc_json,
    read_levircc,
    write_cc_json,
)
from ccexpert_core.data.synthetic import CHANGE_TYPES, SceneGenerator, caption_kind, named_kind
from ccexpert_core.errors import CCExpertError

LEVIRCC_CAPTIONS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "levircc" / "LevirCCcaptions_reconstructed.json"
)
needs_levircc = pytest.mark.skipif(
    not LEVIRCC_CAPTIONS.is_file(), reason=f"{LEVIRCC_CAPTIONS} not found (the shared/ folder beside the repository)"
)


def make_levircc(root: Path, sizes: dict[str, int]) -> Path:
    """A small LEVIR-CC in the original layout (odd-numbered pairs changed); returns the captions file."""
    images, imgid = [], 0
    for split, count in sizes.items():
        for k in range(count):
            filename = f"{split}_{k + 1:06d}.png"
            changed = k % 2 == 1
            sentences = [f"{n} new buildings appear" for n in range(1, 6)] if changed else NO_CHANGE_SENTENCES
            images.append(
                {
                    "filepath": split,
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "changeflag": int(changed),
                    "sentids": list(range(5 * imgid, 5 * imgid + 5)),
                    "sentences": [{"tokens": s.split(), "raw": f" {s.upper()} .", "imgid": imgid} for s in sentences],
                }
            )
            for side, shade in (("A", 40), ("B", 200)):
                path = root / "images" / split / side / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (shade, imgid % 256, 0)).save(path)
            imgid += 1
    captions = root / "LevirCCcaptions.json"
    captions.write_text(json.dumps({"images": images}))
    return captions


def make_cc_json(path: Path, count: int) -> list[str]:
    """A CC JSON file of ``count`` pairs (uids p0..), all on one real image pair; returns the uids."""
    before, after = path.parent / "before.png", path.parent / "after.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(before)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(after)
    pairs = [PairSample(f"p{i}", before, after, (f"caption {i} a", f"caption {i} b"), True) for i in range(count)]
    write_cc_json(pairs, path)
    return [pair.uid for pair in pairs]


def write_mixture(path: Path, entries: list[tuple[str, str]]) -> Path:
    lines = ["datasets:"]
    lines += [f'  - json_path: {json_path}\n    sampling_strategy: "{strategy}"' for json_path, strategy in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- LEVIR-CC -------------------------------------------------------------------------------------------------------


@needs_levircc
def test_dataset_info_on_levircc(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dataset-info", str(LEVIRCC_CAPTIONS)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "levircc"
    pairs = {split: stats["pairs"] for split, stats in info["splits"].items()}
    assert pairs == {"train": 6815, "val": 1333, "test": 1929}
    test = info["splits"]["test"]
    assert test["captions_per_pair"] == {"5": 1929}
    assert test["no_change_pairs"] == 965 and test["no_change_share"] == pytest.approx(965 / 1929)
    assert info["total"]["pairs"] == 10077 and info["total"]["vocabulary_size"] == 995
    assert info["total"]["no_change_share"] == pytest.approx(0.5, abs=0.01)


@needs_levircc
def test_dataset_info_console_script() -> None:
    script = Path(sys.executable).with_name("ccexpert")
    argv = [str(script), "dataset-info", str(LEVIRCC_CAPTIONS)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    info = json.loads(done.stdout)
    assert [info["splits"][s]["pairs"] for s in ("train", "val", "test")] == [6815, 1333, 1929]


@needs_levircc
def test_levircc_entries_follow_the_no_change_sentences() -> None:
    entries = read_levircc(LEVIRCC_CAPTIONS)
    assert len(entries) == 10077
    test = [entry for entry in entries if entry.split == "test"]
    assert test[0].uid == f"Levir_CC_test_img{test[0].imgid}" and test[0].imgid == 6815 + 1333
    no_change = set(NO_CHANGE_SENTENCES)
    assert all(entry.changed != (set(entry.captions) <= no_change) for entry in entries)


def test_levircc_pairs_from_the_original_layout(tmp_path: Path) -> None:
    captions = make_levircc(tmp_path, {"train": 4, "val": 2, "test": 3})
    pairs = levircc_pairs(captions, "test")
    assert [pair.uid for pair in pairs] == ["Levir_CC_test_img6", "Levir_CC_test_img7", "Levir_CC_test_img8"]
    assert pairs[0].before_path == tmp_path / "images" / "test" / "A" / "test_000001.png"
    assert pairs[0].after_path == tmp_path / "images" / "test" / "B" / "test_000001.png"
    # Captions come from the tokens, never from "raw" (whose casing and punctuation vary between copies).
    assert pairs[0].captions == NO_CHANGE_SENTENCES and not pairs[0].changed
    assert pairs[1].changed and len(pairs[1].captions) == 5
    # An images folder elsewhere:
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "images", moved)
    train = levircc_pairs(captions, "train", moved)
    assert [pair.uid for pair in train] == [f"Levir_CC_train_img{i}" for i in range(4)]


def test_convert_levircc_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = make_levircc(tmp_path / "levir", {"train": 5, "test": 2})
    out = tmp_path / "cc" / "levircc_train.json"
    assert cli.main(["convert-levircc", "--captions", str(captions), "--split", "train", "--out", str(out)]) == 0
    assert "wrote 5 pairs" in capsys.readouterr().out
    records = json.loads(out.read_text())
    assert records[1]["img1_path"] == "../levir/images/train/A/train_000002.png"  # relative: the tree can move
    assert records[1]["change_flag"] == 1 and records[0]["change_flag"] == 0
    assert read_cc_json(out) == levircc_pairs(captions, "train")

    shutil.move(tmp_path, tmp_path.parent / f"{tmp_path.name}-moved")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    again = read_cc_json(moved / "cc" / "levircc_train.json")
    assert [pair.uid for pair in again] == [f"Levir_CC_train_img{i}" for i in range(5)]
    assert all(pair.before_path.is_file() and pair.after_path.is_file() for pair in again)


# --- CC JSON --------------------------------------------------------------------------------------------------------


def test_cc_json_fields(tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(image)
    records = [
        {"uid": 7, "img1_path": "img.png", "img2_path": str(image), "change_caption": "A road is built."},
        {"uid": "b", "img1_path": "img.png", "img2_path": "img.png", "change_caption": ["There is no difference ."]},
        {"uid": "c", "change_flag": 1, "img1_path": "img.png", "img2_path": "img.png", "change_caption": ["No."],
         "change_type": "road_built"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    a, b, c = read_cc_json(tmp_path / "d.json")
    assert a.uid == "7" and a.captions == ("A road is built.",) and a.changed  # a single string is one caption
    assert a.before_path == a.after_path == image  # relative to the JSON's folder, or absolute as given
    assert not b.changed  # no flag: the captions decide
    assert c.changed  # a flag is the dataset's label
    assert c.change_type == "road_built" and a.change_type is None  # the kind of change, where the data has it
    records[0]["change_type"] = 3
    (tmp_path / "d.json").write_text(json.dumps(records))
    with pytest.raises(CCExpertError, match="'change_type' should be a name"):
        read_cc_json(tmp_path / "d.json")


# --- mixtures -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("all", [f"p{i}" for i in range(10)]),
        ("first:3", ["p0", "p1", "p2"]),
        ("end:3", ["p7", "p8", "p9"]),
        ("end:0", []),
        ("first:25%", ["p0", "p1", "p2"]),  # 2.5 rounds up
        ("end:10%", ["p9"]),
        ("first:100", [f"p{i}" for i in range(10)]),  # more than there are: all of them
        ("first:100%", [f"p{i}" for i in range(10)]),
    ],
)
def test_mixture_strategies(tmp_path: Path, strategy: str, expected: list[str]) -> None:
    make_cc_json(tmp_path / "data" / "d.json", 10)
    mixture = write_mixture(tmp_path / "mix.yaml", [("data/d.json", strategy), ("data/d.json", "first:1")])
    assert [pair.uid for pair in load_mixture(mixture)] == expected + ["p0"]


def test_mixture_random_is_seeded_and_upsamples_by_repetition(tmp_path: Path) -> None:
    uids = make_cc_json(tmp_path / "d.json", 20)
    mixture = write_mixture(tmp_path / "mix.yaml", [("d.json", "random:5"), ("d.json", "random:25%")])
    first = [pair.uid for pair in load_mixture(mixture, seed=3)]
    assert len(first) == 10 and len(set(first[:5])) == 5 and set(first) <= set(uids)
    assert first[:5] != first[5:]  # a repeated random entry draws again
    assert [pair.uid for pair in load_mixture(mixture, seed=3)] == first
    assert [pair.uid for pair in load_mixture(mixture, seed=4)] != first

    up = write_mixture(tmp_path / "up.yaml", [("d.json", "all")] * 3 + [("d.json", "end:2")])
    counts = Counter(pair.uid for pair in load_mixture(up))
    assert counts == Counter({**{uid: 3 for uid in uids}, "p18": 4, "p19": 4})


def test_mixture_as_bare_list_and_dataset_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cc_json(tmp_path / "d.json", 8)
    (tmp_path / "mix.yml").write_text("- json_path: d.json\n- json_path: d.json\n  sampling_strategy: random:50%\n")
    assert cli.main(["dataset-info", str(tmp_path / "mix.yml"), "--check-images"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "mixture" and info["total"]["pairs"] == 12
    assert [(s["sampling_strategy"], s["pairs"]) for s in info["sources"]] == [("all", 8), ("random:50%", 4)]
    assert info["splits"]["all"]["captions_per_pair"] == {"2": 12}
    assert info["splits"]["all"]["vocabulary_size"] == 3 + 8  # "caption", "a", "b" and the 8 numbers
    assert info["splits"]["all"]["no_change_share"] == 0


def test_sampling_strategy_parsing() -> None:
    assert SamplingStrategy.parse(" random:2.5% ") == SamplingStrategy("random", percent=2.5)
    assert str(SamplingStrategy.parse("end:7")) == "end:7"
    assert SamplingStrategy.parse("first:1.1%").size(7000) == 77  # 77.00000000000001 in floating point
    for bad in ("some", "first", "first:", "first:-1", "random:x", "all:3", "end:101%", "first:1.5"):
        with pytest.raises(ValueError, match="not one of all, first:N"):
            SamplingStrategy.parse(bad)


# --- flatten / random choice ----------------------------------------------------------------------------------------


def _pairs(count: int) -> list[PairSample]:
    captions = [tuple(f"caption {i}.{k}" for k in range(1 + i % 5)) for i in range(count)]
    return [PairSample(f"p{i}", Path("a.png"), Path("b.png"), captions[i], i % 2 == 1) for i in range(count)]


def test_flatten_gives_one_sample_per_caption() -> None:
    pairs = _pairs(10)
    samples = flatten(pairs)
    assert len(samples) == sum(len(pair.captions) for pair in pairs) == 30
    assert [s.caption for s in samples if s.uid == "p3"] == list(pairs[3].captions)
    assert all(s.changed == pairs[int(s.uid[1:])].changed for s in samples)


def test_random_choice_gives_one_sample_per_pair_seeded_by_seed_plus_epoch() -> None:
    pairs = _pairs(50)
    epoch0 = random_choice(pairs, epoch=0, seed=5)
    assert [s.uid for s in epoch0] == [pair.uid for pair in pairs]
    assert all(s.caption in pair.captions for s, pair in zip(epoch0, pairs))
    assert random_choice(pairs, epoch=0, seed=5) == epoch0
    assert random_choice(pairs, epoch=1, seed=5) != epoch0  # a new epoch, new choices
    assert random_choice(pairs, epoch=2, seed=3) == epoch0  # seed + epoch is what counts


# --- synthetic captions ---------------------------------------------------------------------------------------------


def test_every_synthetic_caption_names_its_kind_of_change() -> None:
    generator = SceneGenerator(seed=3, size=192)
    seen = set()
    for pair in generator.pairs(60):
        kinds = {caption_kind(caption) for caption in pair.captions}
        assert kinds == {named_kind(pair.change_type)}, (pair.change_type, pair.captions)
        seen.add(pair.change_type)
    assert seen == {None, *CHANGE_TYPES}  # every kind, and no change, was met
