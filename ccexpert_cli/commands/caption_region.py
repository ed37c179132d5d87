"""``ccexpert caption-region``: caption every tile of an area from two rasters into a GeoPackage (and a report)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ccexpert_core.options import (
    backend_url_value,
    bounds_value,
    date_label_value,
    dated_path_value,
    device_value,
    float_in,
    int_in,
    numbers,
    overlap_value,
    raster_value,
)

if TYPE_CHECKING:
    from ccexpert_core.geo.runner import Captioning

#: Tiles are resized to the model's 384 px; below this a tile holds too little to describe.
MIN_TILE_SIZE, MAX_TILE_SIZE = 32, 4096
MAX_BATCH_SIZE = 256
#: The run contract's default (not imported from it here: ``ccexpert --help`` stays light).
DEFAULT_MAX_TILES = 1_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``caption-region`` subcommand."""
    parser = subparsers.add_parser(
        "caption-region",
        help="caption a whole region from two rasters (or a series of dates) into a GeoPackage",
        description=(
            "Cut the area into tiles, read every date on the first one's grid (later dates are aligned onto it "
            "when needed), caption each tile (for a series: each interval between consecutive dates) and write one "
            "polygon per tile and interval to the 'captions' layer of a GeoPackage. Running again with the same "
            "output resumes where the last run stopped."
        ),
        epilog=(
            "exit status: 0 when every tile asked for is captioned or skipped (no data); 3 when tiles failed (the "
            "engine or backend failed them, or kept failing and the run stopped): they are kept as 'failed' and the "
            "same command run again captions them; 2 for bad input or an output that cannot be written (nothing "
            "written, or the work done kept); 130 when interrupted (the work done kept)."
        ),
    )
    parser.add_argument(
        "--before", type=raster_value, metavar="RASTER",
        help="the earlier raster: any GDAL reads, as a path, an http(s)://, s3://, gs:// or az:// URL or a /vsi… path "
             "(credentials from the environment, as GDAL reads them), or a STAC item's JSON (file or URL)",
    )
    parser.add_argument("--after", type=raster_value, metavar="RASTER", help="the later raster (as --before)")
    parser.add_argument("--before-date", type=date_label_value, metavar="DATE",
                        help="BEFORE's date (2016, 2016-05 or 2016-05-12; default: its metadata, if it says)")
    parser.add_argument("--after-date", type=date_label_value, metavar="DATE", help="AFTER's date")
    parser.add_argument(
        "--date", type=dated_path_value, action="append", metavar="DATE=RASTER",
        help="a series instead of --before/--after: repeat for two or more dates, in time order (2016=a.tif); a STAC "
             "item may come without its date, which the item gives (--date item.json)",
    )
    parser.add_argument(
        "--stac-asset", metavar="NAME",
        help="which asset of the STAC items to read, by name or role (default: the 'visual' one, else 'rgb', else "
             "the item's only raster)",
    )
    parser.add_argument(
        "--first-to-last", action="store_true", help="for a series, also caption the first date against the last"
    )
    parser.add_argument("--out", type=Path, required=True, help="the GeoPackage to write (created or resumed)")
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--area", type=Path, help="GeoJSON (multi)polygons of the area (default: all of BEFORE)")
    area.add_argument(
        "--bounds", type=bounds_value, metavar="XMIN,YMIN,XMAX,YMAX",
        help="the area as bounds in the rasters' CRS",
    )
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument("--model", help="model folder, hub id or preset:tiny (default: the shipped demo model)")
    engine.add_argument(
        "--backend", metavar="URL", nargs="+", type=backend_url_value,
        help="caption with one or several CCExpert backends (of one model) instead of a local model",
    )
    parser.add_argument("--token-file", type=Path, help="file holding the backend's access token")
    parser.add_argument(
        "--ray", metavar="ADDRESS",
        help="caption on a Ray cluster: 'local' starts Ray on this machine, else the head's HOST:PORT (as `ray start "
             "--head` prints it) or ray://HOST:PORT; the rasters and --model must be readable from every node",
    )
    parser.add_argument(
        "--ray-workers", type=int_in(1, 4096), metavar="N",
        help="model workers on the cluster, one Captioner each (default: one per GPU, or one on the CPU)",
    )
    parser.add_argument(
        "--ray-gpus-per-worker", type=float_in(0, 1), metavar="F",
        help="GPUs each worker reserves: 0.5 puts two small models on a GPU, 0 runs workers on CPUs (default: 1)",
    )
    parser.add_argument(
        "--in-flight", type=int_in(1, 256), metavar="N",
        help="requests kept open at each backend (default: enough to keep three of its model batches queued)",
    )
    parser.add_argument(
        "--device", default="auto", type=device_value, help="where a local model runs: auto, cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--tile-size", type=int_in(MIN_TILE_SIZE, MAX_TILE_SIZE), default=384,
        help="tile side in pixels (default: 384)",
    )
    parser.add_argument(
        "--overlap", default="0", type=overlap_value, metavar="N|N%",
        help="overlap of tiles in pixels or %% (default: 0)",
    )
    parser.add_argument(
        "--bands", type=numbers(None, int), metavar="R,G,B",
        help="band numbers to use as RGB, or one band for grey (default: the first three)",
    )
    parser.add_argument(
        "--range", dest="value_range", type=numbers(2, float, increasing=True), metavar="MIN,MAX",
        help="values mapped to 0 and 255 (default: a 2-98%% stretch for data that is not 8-bit)",
    )
    parser.add_argument(
        "--resolution", type=float_in(0, 1e6, low_open=True), metavar="M",
        help="resample both dates to M metres per pixel",
    )
    parser.add_argument(
        "--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=8,
        help="pairs (tile and interval) captioned together: a series' tiles bring one pair per interval (default: 8)",
    )
    parser.add_argument(
        "--max-nodata", type=float_in(0, 1), default=0.5,
        help="skip tiles with a larger share of nodata (default: 0.5)",
    )
    parser.add_argument(
        "--max-tiles", type=int_in(1, 10**9), default=DEFAULT_MAX_TILES,
        help="refuse areas that need more tiles than this, e.g. from a mistyped --resolution "
             f"(default: {DEFAULT_MAX_TILES:,})",
    )
    parser.add_argument("--report", type=Path, help="also write a self-contained HTML report")
    parser.add_argument(
        "--add-to-existing", action="store_true",
        help="add the caption layers to a GeoPackage made by another tool (refused otherwise)",
    )
    parser.set_defaults(handler=run)


def _dates(args: argparse.Namespace) -> list:  # -> list[DateInput]
    """The run's dates: ``--date`` repeated, or ``--before``/``--after`` with their optional dates."""
    from ccexpert_core.errors import CCExpertError
    from ccexpert_core.geo.region import DateInput, log_to_stderr
    from ccexpert_core.geo.stac import dated_rasters

    pair_given = [name for name in ("before", "after", "before_date", "after_date") if getattr(args, name)]
    if args.date:
        if pair_given:
            raise CCExpertError(f"give either --date (repeated) or --before/--after, not both "
                                f"(--{pair_given[0].replace('_', '-')} with --date)")
        if len(args.date) < 2:
            raise CCExpertError("a series needs two or more dates: repeat --date DATE=RASTER, in time order")
        given = [(f"--date {label or raster}", raster, label) for label, raster in args.date]
    elif args.before is None or args.after is None:
        raise CCExpertError("give --before and --after (two rasters), or --date DATE=RASTER repeated for a series")
    elif args.first_to_last:
        raise CCExpertError("--first-to-last is for a series of three or more dates (--date repeated)")
    else:
        given = [("--before", args.before, args.before_date), ("--after", args.after, args.after_date)]
    return [DateInput(*dated) for dated in dated_rasters(given, args.stac_asset, log_to_stderr)]


def run(args: argparse.Namespace) -> int:
    """Caption the region with what the options ask for (a local model, backends or a Ray cluster), say where the
    results are; exit 3 where tiles failed."""
    from ccexpert_core.errors import CCExpertError, FailedTilesError
    from ccexpert_core.geo.progress import ProgressBar
    from ccexpert_core.geo.region import RegionOptions, caption_dates

    if args.token_file is not None and args.backend is None:
        raise CCExpertError("--token-file goes with --backend")
    if args.in_flight is not None and args.backend is None:
        raise CCExpertError("--in-flight goes with --backend (a local model captions one batch at a time)")
    _check_ray_options(args)
    options = RegionOptions(
        tile_size=args.tile_size, overlap=args.overlap, bounds=args.bounds, area_file=args.area, bands=args.bands,
        value_range=args.value_range, resolution=args.resolution, batch_size=args.batch_size,
        max_nodata=args.max_nodata, report=args.report, max_tiles=args.max_tiles,
        add_to_existing=args.add_to_existing, first_to_last=args.first_to_last,
    )
    dates = _dates(args)
    with _captioning(args, dates) as open_captioning:
        summary = caption_dates(dates, args.out, open_captioning, options, progress=ProgressBar())
    counts = ", ".join(f"{count} {status}" for status, count in summary.counts.items())
    print(f"{summary.tiles} tiles in the area ({summary.already_done} done before, now {counts}): {summary.out}")
    if summary.engine_note:
        print(summary.engine_note)
    if summary.report is not None:
        print(f"report: {summary.report}")
    if summary.unfinished:
        what = "tiles" if len(dates) == 2 else "tile intervals"
        raise FailedTilesError(
            f"{summary.unfinished} of the area's {summary.asked} {what} failed (kept as 'failed' in {summary.out}): "
            "run the same command again to caption them"
        )
    return 0


@contextmanager
def _captioning(args: argparse.Namespace, dates: list) -> Iterator[Callable[[], Captioning]]:
    """The factory of the run's captioning (called once the inputs are checked): backends, a Ray cluster (closed
    when the run ends) or a model in this process."""
    from ccexpert_core.defaults import default_model, print_model_note
    from ccexpert_core.geo import engine
    from ccexpert_core.geo.region import log_to_stderr
    from ccexpert_core.geo.run_contract import date_roles
    from ccexpert_core.geo.runner import on_this_machine
    from ccexpert_core.options import check_device

    if args.backend is not None:
        yield lambda: on_this_machine(engine.load_backend_engine(
            args.backend, args.token_file, args.in_flight, args.batch_size, log_to_stderr))
        return
    model = args.model or default_model()
    if args.ray is None:
        check_device(args.device)

        def in_process() -> Captioning:
            print_model_note(model)
            return on_this_machine(engine.load_model_engine(model, args.device))

        yield in_process
        return
    from ccexpert_core.geo.ray_runner import RayRegion

    region = RayRegion(args.ray, args.ray_workers, args.ray_gpus_per_worker, log_to_stderr)
    roles = date_roles(len(dates), [date.label for date in dates])

    def on_ray() -> Captioning:
        print_model_note(model)
        return region.open(model, [(role, date.raster) for role, date in zip(roles, dates)])

    try:
        yield on_ray
    finally:
        region.close()


def _check_ray_options(args: argparse.Namespace) -> None:
    """``--ray`` takes the place of a local device and of backends; its options go with it."""
    from ccexpert_core.errors import CCExpertError

    if args.ray is None:
        given = [name for name in ("ray_workers", "ray_gpus_per_worker") if getattr(args, name) is not None]
        if given:
            raise CCExpertError(f"--{given[0].replace('_', '-')} goes with --ray")
        return
    if args.backend is not None:
        raise CCExpertError("give --ray or --backend, not both: the cluster's workers load the model themselves")
    if args.device != "auto":
        raise CCExpertError("--device goes without --ray: Ray gives each worker its GPU (see --ray-gpus-per-worker)")
