"""``ccexpert dataset-info``: pairs per split, captions per pair, no-change share, vocabulary size of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset-info`` subcommand."""
    parser = subparsers.add_parser(
        "dataset-info",
        help="statistics of LevirCCcaptions.json, a CC JSON file or a YAML mixture",
        description=(
            "Print, as JSON, the pairs per split, captions per pair, no-change share and vocabulary size of a "
            "dataset: LevirCCcaptions.json (splits train/val/test), a CC-Foundation-style JSON list or a YAML "
            "mixture of them (one split, 'all')."
        ),
    )
    parser.add_argument("path", type=Path, help="LevirCCcaptions.json, a CC JSON file or a .yaml mixture")
    parser.add_argument("--check-images", action="store_true", help="also check that every image file exists")
    parser.add_argument(
        "--images", type=Path, help="LEVIR-CC images folder for --check-images (default: images/ beside the JSON)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a mixture's random sampling (default: 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compute and print the statistics."""
    from ccexpert_core.data import dataset_info

    print(json.dumps(dataset_info(args.path, args.check_images, args.images, args.seed), indent=2))
    return 0
