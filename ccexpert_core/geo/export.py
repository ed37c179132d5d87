"""``ccexpert export-dataset``: an analyst's reviewed tiles of a captions layer as training data (CC JSON + PNG chips).

A reviewed feature's caption is the analyst's (``corrected``: ``reviewed_caption``) or the model's (``accepted``:
``caption``); unreviewed captioned features join only when asked. Each chip holds exactly the pixels the run gave
the model for that tile and interval: the run's grid, bands and 8-bit mapping are rebuilt from the options stored
with the layer (``ccexpert_run_options``) by the same code that read them (:class:`~ccexpert_core.geo.raster.
RasterSeries`), from the rasters the run read — local files or URLs, as the run was given them — which are checked
by name, grid, size and CRS (and against the layer's thumbnails where the run stored them).

One limit: for data that is not 8-bit captioned without ``--range``, the run fitted its 2-98 % stretch over the tiles
of its area; the export fits it over the layer's tiles, which are the same for a run that went to its end (a run
stopped early, or resumed over another area, fitted it elsewhere).

Output folder::

    pairs.json    CC JSON: uid, change_flag, img1_path, img2_path, change_caption [the caption], and the feature's
                  tile_id, interval, dates, review_status and model_caption (keys CC JSON readers ignore)
    A/, B/        the interval's earlier and later chip of each tile, PNG
    export.json   what was exported from where (the fine-tune's model card quotes it)
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ccexpert_core.captions import is_no_change
from ccexpert_core.data import read_cc_json
from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo import run_contract as contract
from ccexpert_core.geo import schema
from ccexpert_core.geo.dates import DateLabel
from ccexpert_core.geo.gpkg import timestamp
from ccexpert_core.geo.grid import Tile, TileGrid
from ccexpert_core.geo.raster import RasterSeries, crs_text, open_raster, read_environment, same_crs
from ccexpert_core.geo.report import thumbnail
from ccexpert_core.geo.run_files import roll_back_for_reading
from ccexpert_core.geo.sources import RasterLocation

#: What the export writes in its folder.
PAIRS_JSON = "pairs.json"
SUMMARY_JSON = "export.json"
#: A chip whose thumbnail differs from the run's stored one by more than this mean (0-255 levels) is not the pixels
#: the run read.
THUMBNAIL_TOLERANCE = 1.0
_UNREVIEWED = "unreviewed"


@dataclass(frozen=True)
class DatedRaster:
    """A raster the user gives for the export (a path or URL, made a
    :class:`~ccexpert_core.geo.sources.RasterLocation`), with the date label it was given under
    (``--date LABEL=RASTER``) or None (``--before`` / ``--after``)."""

    location: RasterLocation
    label: DateLabel | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", RasterLocation.of(self.location))


@dataclass
class ExportSummary:
    """What an export wrote."""

    out: Path
    pairs_json: Path
    #: Exported features by review: ``corrected``, ``accepted``, ``unreviewed``.
    counts: dict[str, int]
    #: Features left out, by reason.
    left_out: dict[str, int] = field(default_factory=dict)
    #: Chips checked against the layer's stored thumbnails.
    checked_thumbnails: int = 0

    @property
    def exported(self) -> int:
        """How many pairs the CC JSON holds."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class _Feature:
    tile_id: str
    interval: int
    caption: str | None
    status: str
    date_before: str | None
    date_after: str | None
    model_id: str | None
    review_status: str | None
    reviewed_caption: str | None


@dataclass(frozen=True)
class _Layer:
    options: dict[str, str]
    features: list[_Feature]
    #: (tile_id, interval) → the stored (before, after) thumbnails.
    thumbnails: dict[tuple[str, int], tuple[bytes, bytes]]


def _read_layer(path: Path, layer: str) -> _Layer:
    """The layer's run options, features and thumbnails, read only."""
    if not Path(path).is_file():
        raise CCExpertError(f"--captions {path}: no such file")
    try:  # a writer killed mid-commit leaves what read-only reading cannot undo
        roll_back_for_reading(Path(path), "ccexpert export-dataset")
    except ValueError as error:
        raise CCExpertError(f"--captions {error}") from None
    try:
        connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise CCExpertError(f"cannot read {path}: {error}") from None
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({schema.quote(layer)})")}
        if layer not in tables or schema.missing_required(present) is not None:
            raise CCExpertError(
                f"{path} has no captions layer '{layer}': give a GeoPackage that ccexpert caption-region or the QGIS "
                "plugin wrote (and --layer NAME if its layer has another name)"
            )
        options_table = schema.options_table(layer)
        options = dict(connection.execute(f"SELECT key, value FROM {schema.quote(options_table)}").fetchall()) if (
            options_table in tables) else {}
        missing = [key for key in contract.GRID_OPTIONS if key not in options]
        if missing:
            raise CCExpertError(
                f"{path}: the layer '{layer}' does not record its run's options ({missing[0]} is missing from "
                f"{options_table}), so its tiles' pixels cannot be rebuilt"
            )
        names = ("tile_id", "interval", "caption", "status", "date_before", "date_after", "model_id",
                 "review_status", "reviewed_caption")
        selected = ", ".join(schema.quote(name) if name in present else ("0" if name == "interval" else "NULL")
                             for name in names)
        features = [_Feature(*row) for row in connection.execute(
            f'SELECT {selected} FROM {schema.quote(layer)} ORDER BY "row", "col"'
            + (', "interval"' if "interval" in present else "")
        )]
        thumbnails = {}
        if layer == schema.CAPTIONS_LAYER and schema.THUMBNAILS_TABLE in tables:
            columns = {row[1] for row in connection.execute(f"PRAGMA table_info({schema.THUMBNAILS_TABLE})")}
            interval = '"interval"' if "interval" in columns else "0"
            thumbnails = {
                (tile_id, k): (before, after) for tile_id, k, before, after in connection.execute(
                    f"SELECT tile_id, {interval}, before_png, after_png FROM {schema.THUMBNAILS_TABLE}"
                ) if before and after
            }
    except sqlite3.DatabaseError as error:
        raise CCExpertError(f"{path} is not a GeoPackage that can be read ({error})") from None
    finally:
        connection.close()
    return _Layer(options, features, thumbnails)


def _selected(
    features: Sequence[_Feature], include_unreviewed: bool
) -> tuple[list[tuple[_Feature, str, str]], Counter[str]]:
    """(feature, caption to learn, why it is in) of the features to export; and the features left out, by reason."""
    chosen: list[tuple[_Feature, str, str]] = []
    left_out: Counter[str] = Counter()
    for feature in features:
        review = feature.review_status
        if review == schema.CORRECTED:
            caption = (feature.reviewed_caption or "").strip()
            if caption:
                chosen.append((feature, caption, schema.CORRECTED))
            else:
                left_out["corrected without a caption"] += 1
        elif review == schema.ACCEPTED:
            if feature.caption:
                chosen.append((feature, feature.caption.strip(), schema.ACCEPTED))
            else:
                left_out[f"accepted without a caption ({feature.status})"] += 1
        elif review:
            left_out[f"review_status '{review}' (neither accepted nor corrected)"] += 1
        elif include_unreviewed and feature.status == schema.CAPTIONED and feature.caption:
            chosen.append((feature, feature.caption.strip(), _UNREVIEWED))
        else:
            left_out["not reviewed"] += 1
    return chosen, left_out


def _match_rasters(
    run: contract.StoredRun, rasters: Sequence[DatedRaster], needed: set[int],
) -> dict[int, RasterLocation]:
    """Which given raster is each run date (index → where it is), every needed date given under the run's name."""
    if not rasters:
        raise CCExpertError("give the rasters the layer was captioned from: --before and --after, or --date LABEL=PATH")
    labelled = all(raster.label is not None for raster in rasters)
    if not labelled:
        if len(run.dates) != 2:
            raise CCExpertError(
                f"the layer's run read {len(run.dates)} dates ({run.described()}): give each as --date LABEL=PATH"
            )
        given = dict(enumerate(raster.location for raster in rasters))
        roles = {0: "--before", 1: "--after"}
    else:
        labels = {date.label: index for index, date in enumerate(run.dates) if date.label}
        given, roles = {}, {}
        for raster in rasters:
            text = str(raster.label)
            if text not in labels:
                known = ", ".join(labels) or "none: give --before and --after"
                raise CCExpertError(f"--date {text}=…: the layer's run has no date {text} (its dates: {known})")
            given[labels[text]] = raster.location
            roles[labels[text]] = f"--date {text}"
    for index in sorted(needed | {0}):  # the first date: its grid is the run's
        label, name = run.dates[index].label, run.dates[index].name
        if index not in given:
            raise CCExpertError(f"the layer's run read {name} for date {label or index + 1}: give it too "
                                f"(--date {label or 'LABEL'}={name})")
        if given[index].name != name:
            raise CCExpertError(
                f"{roles[index]} {given[index]}: the layer's run read {name} there; give the rasters the layer was "
                f"captioned from ({run.described()})"
            )
    return {index: path for index, path in given.items() if index in needed | {0}}


def _open_rasters(paths: dict[int, RasterLocation], run: contract.StoredRun) -> tuple[RasterSeries, list[int]]:
    """The given dates (in time order, the run's first date first) on the run's grid and their run indexes; the
    grid, size and CRS must be the stored ones (resampled to a resolution as the run did, where it did)."""
    order = sorted(paths)
    roles = [run.role(index) for index in order]
    first = paths[order[0]]
    dataset = open_raster(first, roles[0])
    crs = dataset.crs
    dataset.close()
    if not same_crs(run.crs, crs_text(crs)):
        raise CCExpertError(
            f"{first.name} does not match the layer's run: its crs is {crs.to_string()}, the run's was "
            f"{run.crs}: give the rasters the layer was captioned from"
        )
    series = RasterSeries([paths[i] for i in order], roles, run.bands, None, log=lambda message: None)
    mismatch = run.grid_mismatch(_grid(series, run))
    if mismatch is not None and not crs.is_geographic:
        # A run with --resolution: the same raster, resampled as the run did.
        series.close()
        metres = run.pixel_size() * crs.linear_units_factor[1]
        series = RasterSeries([paths[i] for i in order], roles, run.bands, metres, log=lambda message: None)
        mismatch = run.grid_mismatch(_grid(series, run))
    if mismatch is not None:
        found = contract.grid_words(_grid(series, run))[mismatch]
        series.close()
        raise CCExpertError(
            f"{first.name} does not match the layer's run: its {mismatch} is {found}, the run's was "
            f"{run.options[mismatch]}: give the rasters the layer was captioned from"
        )
    return series, order


def _grid(series: RasterSeries, run: contract.StoredRun) -> TileGrid:
    return run.tile_grid(series.grid.width, series.grid.height, series.grid.gdal_transform)


def _matches_thumbnail(rgb: np.ndarray, stored: bytes) -> bool:
    """Whether a chip gives the run's stored thumbnail again: the report's JPEG made from it (the same encoder
    gives the same bytes; another build of it differs by a fraction of a level), or, for older outputs, the
    lossless PNG reduction."""
    kept = Image.open(io.BytesIO(stored))
    if kept.format == "PNG":
        made = Image.fromarray(rgb).reduce(max(1, round(rgb.shape[1] / kept.width)))
    else:
        made = Image.open(io.BytesIO(thumbnail(rgb)))
    if made.size != kept.size:
        return False
    difference = np.abs(np.asarray(made.convert("RGB"), np.float32) - np.asarray(kept.convert("RGB"), np.float32))
    return float(difference.mean()) <= THUMBNAIL_TOLERANCE


def export_dataset(
    captions: Path, out: Path, rasters: Sequence[DatedRaster], include_unreviewed: bool = False,
    layer: str = schema.CAPTIONS_LAYER,
) -> ExportSummary:
    """Write the reviewed features of ``captions`` (and the unreviewed captioned ones with ``include_unreviewed``)
    as a CC JSON dataset in the new folder ``out``, with chips read from ``rasters`` as the run read them.

    Everything is checked (the layer, its options, what is reviewed, the rasters) before anything is written; an
    error later removes what was written. Raises :class:`~ccexpert_core.errors.CCExpertError` for bad input.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CCExpertError(f"--out {out} exists and is not an empty folder: choose a new folder for the dataset")
    data = _read_layer(Path(captions), layer)
    chosen, left_out = _selected(data.features, include_unreviewed)
    if not chosen:
        reviewed = sum(1 for feature in data.features if feature.review_status)
        hint = "" if include_unreviewed else ", or pass --include-unreviewed to export the model's captions"
        raise CCExpertError(
            f"nothing to export from {captions}: {len(data.features)} features, {reviewed} reviewed with a caption "
            f"(review_status accepted or corrected): review tiles in QGIS first{hint}"
        )
    try:
        run = contract.read_stored(data.options)
    except contract.RunRefused as error:
        raise CCExpertError(f"{captions}: {error}") from None
    try:
        wanted = {run.intervals[feature.interval] for feature, _, _ in chosen}
    except IndexError:
        raise CCExpertError(f"{captions}: a feature's interval is not one of the run's {len(run.intervals)}") from None
    paths = _match_rasters(run, rasters, {index for pair in wanted for index in pair})
    with read_environment():  # GDAL's settings for remote rasters, as the run had them
        series, order = _open_rasters(paths, run)
        with series:
            grid = _grid(series, run)
            tiles = {tile.tile_id: tile for tile in grid.tiles()}
            stray = sorted({feature.tile_id for feature in data.features} - set(tiles))
            if stray:
                raise CCExpertError(f"{captions}: tile {stray[0]} is not in the grid its run options describe")
            # The run fitted its 8-bit mapping over its area's tiles: the layer's tiles.
            series.fit_stretch([tiles[tile_id] for tile_id in {f.tile_id for f in data.features}], run.value_range)
            created = not out.exists()
            try:
                return _write(out, Path(captions), chosen, run, series, order, tiles, data, left_out,
                              include_unreviewed)
            except BaseException:
                _remove_written(out, created)
                raise


def _remove_written(out: Path, created: bool) -> None:
    """Take back what a failed export wrote: the folder it made, or what it put in the empty folder it was given."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write(
    out: Path, captions: Path, chosen: list[tuple[_Feature, str, str]], run: contract.StoredRun, series: RasterSeries,
    order: list[int], tiles: dict[str, Tile], data: _Layer, left_out: Counter, include_unreviewed: bool,
) -> ExportSummary:
    for sub in ("A", "B"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    position = {index: k for k, index in enumerate(order)}
    records, counts, checked = [], Counter({schema.CORRECTED: 0, schema.ACCEPTED: 0, _UNREVIEWED: 0}), 0
    for feature, caption, why in chosen:
        tile = tiles[feature.tile_id]
        first, second = run.intervals[feature.interval]
        window = Window(tile.x, tile.y, tile.width, tile.height)
        try:
            chips = [series.dates[position[index]].read(window)[0] for index in (first, second)]
        except RasterioError as error:
            raise CCExpertError(f"tile {feature.tile_id} cannot be read: {error}") from None
        stored = data.thumbnails.get((feature.tile_id, feature.interval))
        if stored is not None:
            for chip, thumbnail, date in zip(chips, stored, (first, second)):
                if not _matches_thumbnail(chip, thumbnail):
                    raise CCExpertError(
                        f"tile {feature.tile_id}: the pixels of {run.dates[date].name} read now differ from what the "
                        "run captioned (its thumbnail in the layer): give the very rasters the layer was captioned from"
                    )
            checked += 1
        name = f"{feature.tile_id}_i{feature.interval}.png"
        for sub, chip in zip(("A", "B"), chips):
            Image.fromarray(chip).save(out / sub / name)
        counts[why] += 1
        records.append({
            "uid": f"{captions.stem}_{feature.tile_id}_i{feature.interval}",
            "change_flag": int(not is_no_change(caption)),
            "img1_path": f"A/{name}",
            "img2_path": f"B/{name}",
            "change_caption": [caption],
            "tile_id": feature.tile_id,
            "interval": feature.interval,
            "date_before": feature.date_before or run.dates[first].label or None,
            "date_after": feature.date_after or run.dates[second].label or None,
            "review_status": feature.review_status,
            "model_caption": feature.caption,
        })
    pairs_json = out / PAIRS_JSON
    pairs_json.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    read_cc_json(pairs_json)  # what was written reads back as the training data it is meant to be
    summary = ExportSummary(out, pairs_json, dict(counts), dict(left_out), checked)
    record: dict[str, Any] = {
        "captions": str(captions.resolve()),
        "exported_at": timestamp(),
        "pairs": PAIRS_JSON,
        "counts": summary.counts,
        "left_out": summary.left_out,
        "include_unreviewed": include_unreviewed,
        "checked_thumbnails": checked,
        "rasters": [run.dates[index].name for index in order],
        "model_ids": ", ".join(sorted({f.model_id for f, _, _ in chosen if f.model_id})) or "unknown",
        "run_options": data.options,
    }
    (out / SUMMARY_JSON).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return summary
