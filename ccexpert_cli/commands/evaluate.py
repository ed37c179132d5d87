"""``ccexpert evaluate``: score captions exactly as the published LEVIR-CC numbers (BLEU, METEOR, ROUGE-L, CIDEr-D)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ccexpert_core.errors import CCExpertError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, S*m, change accuracy",
        description=(
            "Score predicted captions against references as the published LEVIR-CC numbers do (pycocoevalcap; "
            "METEOR needs Java). Without --references, --predictions is CCExpert's JSON Lines "
            '({"uid", "pred", "change_caption": [references]} per line). With --references LevirCCcaptions.json, '
            "--predictions is a JSON object {file name or imgid: caption} or a list of "
            '{"filename"|"imgid": .., "caption"|"pred": ..}. Prints JSON (scores ×100) or a table.'
        ),
    )
    parser.add_argument("--predictions", type=Path, required=True, help="predictions file (see above)")
    parser.add_argument("--references", type=Path, help="LevirCCcaptions.json holding the reference captions")
    parser.add_argument("--split", help="split of --references to score (default: test)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score only the pairs that have a prediction (the output reports how many are missing)",
    )
    parser.add_argument("--format", choices=("json", "table"), default="json", help="output format (default: json)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read, score, print."""
    from ccexpert_core.evaluation import (
        evaluate,
        format_table,
        read_ccexpert_predictions,
        read_keyed_predictions,
    )

    if args.references is None:
        if args.split is not None:
            raise CCExpertError("--split chooses pairs of --references; CCExpert JSON Lines carry their own references")
        data = read_ccexpert_predictions(args.predictions)
    else:
        data = read_keyed_predictions(args.predictions, args.references, args.split or "test")
    result = evaluate(data.predictions, data.references, allow_missing=args.allow_missing, source=str(args.predictions))
    print(format_table(result) if args.format == "table" else json.dumps(result, indent=2))
    return 0
