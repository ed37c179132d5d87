"""``ccexpert caption-region``: caption every tile of an area from two rasters into a GeoPackage (and a report)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _numbers(text: str, count: int | None, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected comma-separated numbers, not '{text}'") from None
    if count is not None and len(values) != count:
        raise argparse.ArgumentTypeError(f"{what}: expected {count} numbers, not {len(values)}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``caption-region`` subcommand."""
    parser = subparsers.add_parser(
        "caption-region",
        help="caption a whole region from two rasters into a GeoPackage",
        description=(
            "Cut the area into tiles, read both dates on BEFORE's grid (AFTER is aligned onto it when needed), "
            "caption each tile and write one polygon per tile to the 'captions' layer of a GeoPackage. "
            "Running again with the same output resumes where the last run stopped."
        ),
    )
    parser.add_argument("--before", type=Path, required=True, help="the earlier raster (any format GDAL reads)")
    parser.add_argument("--after", type=Path, required=True, help="the later raster")
    parser.add_argument("--out", type=Path, required=True, help="the GeoPackage to write (created or resumed)")
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--area", type=Path, help="GeoJSON (multi)polygons of the area (default: all of BEFORE)")
    area.add_argument(
        "--bounds", type=lambda t: _numbers(t, 4, float, "--bounds"), metavar="XMIN,YMIN,XMAX,YMAX",
        help="the area as bounds in the rasters' CRS",
    )
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument("--model", help="model folder, hub id or preset:tiny (default: the shipped demo model)")
    engine.add_argument("--backend", metavar="URL", help="caption with a CCExpert backend instead of a local model")
    parser.add_argument("--token-file", type=Path, help="file holding the backend's access token")
    parser.add_argument("--device", default="auto", help="where a local model runs: auto, cpu, cuda (default: auto)")
    parser.add_argument("--tile-size", type=int, default=384, help="tile side in pixels (default: 384)")
    parser.add_argument("--overlap", default="0", metavar="N|N%", help="overlap of tiles in pixels or %% (default: 0)")
    parser.add_argument(
        "--bands", type=lambda t: _numbers(t, None, int, "--bands"), metavar="R,G,B",
        help="band numbers to use as RGB, or one band for grey (default: the first three)",
    )
    parser.add_argument(
        "--range", dest="value_range", type=lambda t: _numbers(t, 2, float, "--range"), metavar="MIN,MAX",
        help="values mapped to 0 and 255 (default: a 2-98%% stretch for data that is not 8-bit)",
    )
    parser.add_argument("--resolution", type=float, metavar="M", help="resample both dates to M metres per pixel")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles captioned together (default: 8)")
    parser.add_argument(
        "--max-nodata", type=float, default=0.5, help="skip tiles with a larger share of nodata (default: 0.5)"
    )
    parser.add_argument("--report", type=Path, help="also write a self-contained HTML report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the engine, caption the region, say where the results are."""
    from ccexpert_core.errors import CCExpertError
    from ccexpert_core.defaults import default_model, print_model_note
    from ccexpert_core.geo.engine import CaptionEngine, load_backend_engine, load_model_engine
    from ccexpert_core.geo.progress import ProgressBar
    from ccexpert_core.geo.region import RegionOptions, caption_region

    if args.token_file is not None and args.backend is None:
        raise CCExpertError("--token-file goes with --backend")
    options = RegionOptions(
        tile_size=args.tile_size, overlap=args.overlap, bounds=args.bounds, area_file=args.area, bands=args.bands,
        value_range=args.value_range, resolution=args.resolution, batch_size=args.batch_size,
        max_nodata=args.max_nodata, report=args.report,
    )
    def load_engine() -> CaptionEngine:
        if args.backend is not None:
            return load_backend_engine(args.backend, args.token_file)
        model = args.model or default_model()
        print_model_note(model)
        return load_model_engine(model, args.device)

    summary = caption_region(args.before, args.after, args.out, load_engine, options, progress=ProgressBar())
    counts = ", ".join(f"{count} {status}" for status, count in summary.counts.items())
    print(f"{summary.tiles} tiles in the area ({summary.already_done} done before, now {counts}): {summary.out}")
    if summary.report is not None:
        print(f"report: {summary.report}")
    return 0
