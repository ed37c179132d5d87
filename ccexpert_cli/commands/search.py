"""``ccexpert search``: a captions GeoPackage's tiles ranked for a query in words (the ranking QGIS's locator bar
and the review dock use)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Captions longer than this are cut in the table (JSON gives them whole).
TABLE_CAPTION_CHARACTERS = 70


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand."""
    parser = subparsers.add_parser(
        "search",
        help="find the tiles of a captions GeoPackage in words: 'demolished houses', 'new roads 2021'",
        description=(
            "Rank the tiles of a captions layer for a query: words and their variants (houses finds buildings and "
            "villas, demolished finds demolition), dates and ranges (2021, 2018..2021, 2018.., ..2020), changed / "
            "unchanged, reviewed / unreviewed / accepted / corrected. The caption shown is the analyst's where a "
            "tile was corrected."
        ),
    )
    parser.add_argument("captions", type=Path, help="the GeoPackage caption-region or QGIS wrote")
    parser.add_argument("query", help="what to find, in quotes: \"demolished houses 2018..2021\"")
    parser.add_argument("--layer", default="captions", help="the captions layer's name (default: captions)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
    parser.add_argument("--limit", type=int, default=20, help="at most this many tiles, best first (0: all; 20)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Search and print the hits."""
    from ccexpert_core.errors import CCExpertError
    from ccexpert_core.geo.search import SearchIndex, parse_query
    from ccexpert_core.geo.search_entries import read_entries

    if args.limit < 0:
        raise CCExpertError(f"--limit must be 0 (all) or more, not {args.limit}")
    try:
        query = parse_query(args.query)
    except ValueError as error:
        raise CCExpertError(str(error)) from None
    hits = SearchIndex(read_entries(args.captions, args.layer)).search(query, args.limit or None)
    rows = [{
        "tile_id": hit.entry.tile_id, "interval": hit.entry.interval, "date_before": hit.entry.date_before,
        "date_after": hit.entry.date_after, "caption": hit.entry.shown_caption, "changed": hit.entry.changed,
        "change_kind": hit.entry.kind, "confidence": hit.entry.confidence, "p_right": hit.entry.p_right,
        "review_status": hit.entry.review_status, "score": round(hit.score, 3),
    } for hit in hits]
    if args.format == "json":
        print(json.dumps({"query": query.text, "layer": args.layer, "hits": rows}, indent=1, ensure_ascii=False))
    else:
        print(_table(rows) if rows else f"no tile of {args.captions} matches '{query.text}'")
    return 0


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _table(rows: list[dict]) -> str:
    header = ("#", "tile", "dates", "kind", "conf", "p_right", "review", "caption")
    lines = [header]
    for rank, row in enumerate(rows, 1):
        dates = f"{row['date_before'] or '?'}→{row['date_after'] or '?'}" if (
            row["date_before"] or row["date_after"]) else ""
        caption = row["caption"] or ""
        if len(caption) > TABLE_CAPTION_CHARACTERS:
            caption = caption[: TABLE_CAPTION_CHARACTERS - 1] + "…"
        tile = row["tile_id"] + (f" #{row['interval']}" if row["interval"] else "")
        lines.append((str(rank), tile, dates, row["change_kind"] or ("no change" if not row["changed"] else ""),
                      _number(row["confidence"]), _number(row["p_right"]), row["review_status"] or "", caption))
    widths = [max(len(line[k]) for line in lines) for k in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in lines)
