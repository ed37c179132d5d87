"""Every user error of evaluate, dataset-info and convert-levircc: exit code 2, one clear line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ccexpert_cli as cli

#: A captions file in the LevirCCcaptions.json layout: 1 train pair and 3 test pairs, no images.
LEVIRCC = {
    "images": [
        {
            "filename": f"{split}_{k:06d}.png",
            "imgid": i,
            "split": split,
            "changeflag": 0,
            "sentences": [{"tokens": ["there", "is", "no", "difference"]}],
        }
        for i, (split, k) in enumerate([("train", 1), ("test", 1), ("test", 2), ("test", 3)])
    ]
}
ONE_PAIR = [{"uid": "a", "pred": "a road", "change_caption": ["a road is built"]}]
KEYED = ["evaluate", "--references", "{tmp}/c.json", "--predictions", "{tmp}/k.json"]

# (id, files to write in tmp, argv with "{tmp}", what the one line must say)
CASES: list[tuple[str, dict[str, Any], list[str], str]] = [
    ("no predictions file", {}, ["evaluate", "--predictions", "{tmp}/p.jsonl"], "p.jsonl: no such file"),
    (
        "malformed JSON Lines",
        {"p.jsonl": '{"uid": "a", "pred": "x", "change_caption": ["y"]}\n{"uid": \n'},
        ["evaluate", "--predictions", "{tmp}/p.jsonl"],
        "p.jsonl: line 2 is not valid JSON",
    ),
    (
        "record without uid",
        {"p.jsonl": [{"pred": "x", "change_caption": ["y"]}]},
        ["evaluate", "--predictions", "{tmp}/p.jsonl"],
        "p.jsonl: line 1: 'uid' is missing",
    ),
    (
        "references not a list",
        {"p.jsonl": [{"uid": "a", "change_caption": "y"}]},
        ["evaluate", "--predictions", "{tmp}/p.jsonl"],
        "p.jsonl: line 1: 'change_caption' should be a list, got a string",
    ),
    (
        "conflicting repeated uid",
        {"p.jsonl": [{"uid": "a", "pred": p, "change_caption": ["y"]} for p in ("x", "z")]},
        ["evaluate", "--predictions", "{tmp}/p.jsonl"],
        "p.jsonl: line 2: uid a was already on line 1 with a different pred",
    ),
    (
        "missing predictions",
        {"p.jsonl": [{"uid": u, "pred": None if u in "bcde" else "x", "change_caption": ["y"]} for u in "abcdef"]},
        ["evaluate", "--predictions", "{tmp}/p.jsonl"],
        "p.jsonl: predictions missing for 4 of 6 pairs: b, c, d and 1 more (--allow-missing",
    ),
    ("empty predictions file", {"p.jsonl": ""}, ["evaluate", "--predictions", "{tmp}/p.jsonl"], "holds no prediction"),
    (
        "--split without --references",
        {"p.jsonl": ONE_PAIR},
        ["evaluate", "--predictions", "{tmp}/p.jsonl", "--split", "val"],
        "--split chooses pairs of --references",
    ),
    (
        "keyed: malformed JSON",
        {"c.json": LEVIRCC, "k.json": '{"test_000001.png": "x",}'},
        KEYED,
        "k.json: not valid JSON (line 1, column 25",
    ),
    (
        "keyed: missing pairs, named by file name",
        # imgid 1 is test_000001.png; a train pair's prediction belongs to another split and is ignored.
        {"c.json": LEVIRCC, "k.json": {"1": "x", "train_000001.png": "y"}},
        KEYED,
        "k.json: predictions missing for 2 of 3 pairs: test_000002.png, test_000003.png",
    ),
    (
        "keyed: keys of no pair",
        {"c.json": LEVIRCC, "k.json": [{"filename": "test_9.png", "caption": "x"}, {"imgid": 99, "pred": "y"}]},
        KEYED,
        "k.json: 2 keys match no pair of",
    ),
    (
        "keyed: two different predictions for one pair",
        {"c.json": LEVIRCC, "k.json": [{"filename": "test_000001.png", "caption": "x"}, {"imgid": 1, "pred": "y"}]},
        KEYED,
        "k.json: [1]: a second, different prediction for test_000001.png",
    ),
    (
        "keyed: an item without a key",
        {"c.json": LEVIRCC, "k.json": [{"caption": "x"}]},
        KEYED,
        "k.json: [0]: expected an object with 'filename' or 'imgid'",
    ),
    (
        "keyed: empty split",
        {"c.json": LEVIRCC, "k.json": {}},
        [*KEYED, "--split", "val"],
        "c.json: no pairs in split 'val' (splits in the file: test, train)",
    ),
    ("dataset-info: malformed JSON", {"d.json": '{"images": ['}, ["dataset-info", "{tmp}/d.json"], "not valid JSON"),
    (
        "dataset-info: neither format",
        {"d.json": 42},
        ["dataset-info", "{tmp}/d.json"],
        "d.json: neither the LevirCCcaptions.json layout",
    ),
    (
        "dataset-info: LEVIR-CC entry without sentences",
        {"d.json": {"images": [{"filename": "a.png", "imgid": 0, "split": "test"}]}},
        ["dataset-info", "{tmp}/d.json"],
        "d.json: images[0]: 'sentences' is missing",
    ),
    ("dataset-info: empty CC JSON", {"d.json": []}, ["dataset-info", "{tmp}/d.json"], "d.json: holds no pairs"),
    (
        "dataset-info: missing images",
        {"d.json": [{"uid": "a", "img1_path": "A/1.png", "img2_path": "B/1.png", "change_caption": ["x"]}]},
        ["dataset-info", "--check-images", "{tmp}/d.json"],
        "d.json: 2 image files are missing: ",
    ),
    (
        "dataset-info: mixture with a bad strategy",
        {"m.yaml": "datasets:\n  - json_path: d.json\n    sampling_strategy: sometimes\n"},
        ["dataset-info", "{tmp}/m.yaml"],
        "m.yaml: datasets[0]: sampling_strategy 'sometimes' is not one of all, first:N, end:N, random:N",
    ),
    (
        "dataset-info: mixture without json_path",
        {"m.yaml": "datasets:\n  - path: d.json\n"},
        ["dataset-info", "{tmp}/m.yaml"],
        "m.yaml: datasets[0]: 'json_path' is missing",
    ),
    (
        "dataset-info: mixture naming a missing file",
        {"m.yaml": "- json_path: gone.json\n"},
        ["dataset-info", "{tmp}/m.yaml"],
        "gone.json: no such file",
    ),
    ("dataset-info: malformed YAML", {"m.yaml": "datasets: [\n"}, ["dataset-info", "{tmp}/m.yaml"], "not valid YAML"),
    (
        "convert-levircc: missing images",
        {"c.json": LEVIRCC},
        ["convert-levircc", "--captions", "{tmp}/c.json", "--split", "test", "--out", "{tmp}/o.json"],
        "c.json: 6 image files are missing: ",
    ),
    (
        "convert-levircc: empty split",
        {"c.json": LEVIRCC},
        ["convert-levircc", "--captions", "{tmp}/c.json", "--split", "dev", "--out", "{tmp}/o.json"],
        "c.json: no pairs in split 'dev'",
    ),
]


def write_files(folder: Path, files: dict[str, Any]) -> None:
    """Text as it is; a list for a .jsonl file as one JSON line per item; anything else as JSON."""
    for name, content in files.items():
        if isinstance(content, str):
            text = content
        elif name.endswith(".jsonl"):
            text = "".join(json.dumps(record) + "\n" for record in content)
        else:
            text = json.dumps(content)
        (folder / name).write_text(text)


def assert_one_line_error(returncode: int, stderr: str, command: str, message: str) -> None:
    assert returncode == 2, stderr
    assert stderr.startswith(f"ccexpert {command}: error: "), stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    assert message in stderr, stderr


@pytest.mark.parametrize(("files", "argv", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, Any], argv: list[str], message: str
) -> None:
    write_files(tmp_path, files)
    returncode = cli.main([arg.format(tmp=tmp_path) for arg in argv])
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(returncode, err, argv[0], message)
    assert not (tmp_path / "o.json").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("java", "message"),
    [
        (None, "METEOR 1.5 runs on Java and no `java` command is on PATH"),
        (
            "#!/bin/sh\necho 'Error: Could not reserve enough space for 2097152KB object heap' >&2\nexit 1\n",
            "METEOR (Java) stopped without a score: Error: Could not reserve enough space",
        ),
    ],
    ids=["no java", "JVM fails"],
)
def test_java_problems(tmp_path: Path, java: str | None, message: str) -> None:
    """A whole process, so that nothing more is printed when the interpreter exits (pycocoevalcap's ``__del__``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if java is not None:
        (bin_dir / "java").write_text(java)
        (bin_dir / "java").chmod(0o755)
    write_files(tmp_path, {"p.jsonl": ONE_PAIR})
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ccexpert")), "evaluate", "--predictions", str(tmp_path / "p.jsonl")],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
        timeout=60,
    )
    assert done.stdout == ""
    assert_one_line_error(done.returncode, done.stderr, "evaluate", message)
