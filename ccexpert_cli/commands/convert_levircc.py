"""``ccexpert convert-levircc``: one split of LEVIR-CC's original layout as CC-Foundation-style JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert-levircc`` subcommand."""
    parser = subparsers.add_parser(
        "convert-levircc",
        help="write one LEVIR-CC split as CC JSON (for training mixtures)",
        description=(
            "Read LevirCCcaptions.json and images/<split>/A|B/<filename>, check every image exists, and write "
            "a JSON list of {uid, change_flag, img1_path, img2_path, change_caption} with image paths relative "
            "to the output file."
        ),
    )
    parser.add_argument("--captions", type=Path, required=True, help="LevirCCcaptions.json")
    parser.add_argument("--images", type=Path, help="images folder (default: images/ beside the captions file)")
    parser.add_argument("--split", required=True, help="split to convert: train, val or test")
    parser.add_argument("--out", type=Path, required=True, help="CC JSON file to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Convert and say how many pairs were written."""
    from ccexpert_core.data import convert_levircc

    count = convert_levircc(args.captions, args.split, args.out, args.images)
    print(f"wrote {count} pairs of split '{args.split}' to {args.out}")
    return 0
