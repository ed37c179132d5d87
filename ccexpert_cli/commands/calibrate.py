"""``ccexpert calibrate``: fit ``p_right`` (how likely each caption is right) on the analyst's reviews of a captions
GeoPackage and write it into the layer; optionally a report with the reliability diagram."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help="p_right for every tile of a captions GeoPackage, fitted on the analyst's reviews",
        description=(
            "Fit a monotone map from the model's confidence (and change flag) to the probability that a caption is "
            "right, on the layer's reviewed tiles (accepted: right, corrected: wrong), per interval of the date "
            "series, and write it as the p_right field of every captioned tile once enough tiles are reviewed "
            "(empty before; it says how many), with the fitted map in the ccexpert_calibration table. The QGIS "
            "review dock does the same after each review. A layer without reviews is left as it is."
        ),
    )
    parser.add_argument("captions", type=Path, help="the GeoPackage caption-region or QGIS wrote")
    parser.add_argument("--layer", default="captions", help="the captions layer's name (default: captions)")
    parser.add_argument("--report", type=Path, help="also write an HTML report with the reliability diagram "
                        "(the captions layer that caption-region writes)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Fit, write, and say what the fit found."""
    from ccexpert_core.errors import CCExpertError
    from ccexpert_core.geo.calibrate import recalibrate
    from ccexpert_core.geo.calibration import MIN_REVIEWS
    from ccexpert_core.geo.schema import CAPTIONS_LAYER

    if args.report is not None and args.layer != CAPTIONS_LAYER:
        raise CCExpertError(f"--report reads the '{CAPTIONS_LAYER}' layer that caption-region writes, not "
                            f"'{args.layer}': leave out --report or --layer")
    if args.report is not None and args.report.resolve() == args.captions.resolve():
        raise CCExpertError(f"--report {args.report} is the GeoPackage itself: name another file")
    done = recalibrate(args.captions, args.layer)
    reviewed = f"{done.reviews} reviewed tiles ({done.wrong} corrected)"
    if done.calibration is None:
        cleared = " (the earlier p_right is cleared)" if done.written else "; nothing written"
        print(f"{reviewed}: p_right needs {MIN_REVIEWS}{cleared}")
    else:
        print(f"p_right written for {done.tiles} tiles from {reviewed}")
        for found in done.calibration.intervals.values():
            dates = f" {found.date_before or '?'}→{found.date_after or '?'}" if (
                found.date_before or found.date_after) else ""
            points = ", ".join(f"{c:.2f} → {float(found.p_right(c, True)):.2f}" for c in (0.5, 0.7, 0.9, 0.99))
            print(f"  interval {found.interval}{dates}: {found.reviews} reviews; a changed tile's confidence "
                  f"{points}")
        print(f"of the {done.unreviewed_changed} unreviewed changed tiles, about {round(done.likely_wrong)} are "
              "likely wrong")
    if args.report is not None:
        print(f"report: {_report(args.captions, args.report)}")
    return 0


def _report(captions: Path, path: Path) -> Path:
    from ccexpert_core.geo.captions_layer import read_tiles
    from ccexpert_core.geo.gpkg import timestamp
    from ccexpert_core.geo.report import write_report

    return write_report(path, read_tiles(captions), None, {"GeoPackage": str(captions), "written": timestamp()})
