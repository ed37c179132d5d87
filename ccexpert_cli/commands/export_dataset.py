"""``ccexpert export-dataset``: the analyst's reviewed tiles of a captions GeoPackage as training data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccexpert_core.options import dated_path_value, raster_value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export-dataset`` subcommand."""
    parser = subparsers.add_parser(
        "export-dataset",
        help="the reviewed tiles of a captions GeoPackage as a training dataset (CC JSON + PNG chips)",
        description=(
            "Write the tiles an analyst reviewed (accepted: the model's caption; corrected: the analyst's) as a "
            "dataset in the training format: CC JSON and PNG chips holding exactly the pixels the run captioned, "
            "read again from the run's rasters with the options stored in the GeoPackage. Then: ccexpert train "
            "--recipe finetune --data OUT/pairs.json --out MODEL."
        ),
    )
    parser.add_argument("--captions", type=Path, required=True, help="the GeoPackage caption-region or QGIS wrote")
    parser.add_argument(
        "--before", type=raster_value, metavar="RASTER",
        help="the run's earlier raster, as the run was given it (a path, a URL or a STAC item; a two-date run)",
    )
    parser.add_argument("--after", type=raster_value, metavar="RASTER", help="the run's later raster")
    parser.add_argument(
        "--date", type=dated_path_value, action="append", metavar="DATE=RASTER",
        help="a date of the run and its raster, instead of --before/--after: repeat for each date (2016=a.tif)",
    )
    parser.add_argument("--stac-asset", metavar="NAME", help="the STAC items' asset the run read (as caption-region)")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write (new, or empty)")
    parser.add_argument(
        "--include-unreviewed", action="store_true",
        help="also export the captioned tiles nobody reviewed, with the model's caption",
    )
    parser.add_argument("--layer", default="captions", help="the captions layer's name (default: captions)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export, and say what was exported."""
    from ccexpert_core.errors import CCExpertError
    from ccexpert_core.geo.export import DatedRaster, export_dataset
    from ccexpert_core.geo.stac import dated_rasters

    if args.date and (args.before or args.after):
        raise CCExpertError("give either --date (repeated) or --before/--after, not both")
    if args.date:
        given = [(f"--date {label or raster}", raster, label) for label, raster in args.date]
    elif args.before and args.after:
        given = [("--before", args.before, None), ("--after", args.after, None)]
    else:
        raise CCExpertError("give the run's rasters: --before and --after, or --date DATE=RASTER for each date")
    # --before/--after are matched to the run's two dates by position, whatever date a STAC item gives them.
    rasters = [DatedRaster(raster, label if args.date else None)
               for raster, label in dated_rasters(given, args.stac_asset, print)]
    summary = export_dataset(args.captions, args.out, rasters, args.include_unreviewed, args.layer)
    counts = summary.counts
    parts = [f"{counts['corrected']} corrected", f"{counts['accepted']} accepted"]
    if args.include_unreviewed:
        parts.append(f"{counts['unreviewed']} not reviewed")
    print(f"exported {summary.exported} tiles ({', '.join(parts)}) to {summary.pairs_json}")
    if summary.left_out:
        print("left out: " + ", ".join(f"{count} {why}" for why, count in sorted(summary.left_out.items())))
    if summary.checked_thumbnails:
        print(f"{summary.checked_thumbnails} tiles checked against the run's thumbnails in {args.captions}")
    print(f"next: ccexpert train --recipe finetune --data {summary.pairs_json} --out MODEL_FOLDER")
    return 0
