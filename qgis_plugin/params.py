"""What the analyst chose in the dialog, as one dataclass, remembered between sessions in QgsSettings.

The dialog only fills a :class:`CaptionParams`; :func:`job_from_params` turns it into a :class:`~.job.Job` (plain
values, safe to hand to a background task) against the current project and map canvas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)

from .area import polygons_in_crs, rectangle_in_crs
from .errors import CaptionRunError
from .job import RETRY_BUDGET_S, Job, RasterInput
from .shared_modules import protocol, run_contract, schema

SETTINGS_GROUP = "ccexpert"
DEFAULT_BACKEND_URL = "http://127.0.0.1:8000"


class AreaMode(str, Enum):
    """Where to caption."""

    OVERLAP = "overlap"  # wherever both rasters have pixels
    CANVAS = "canvas"  # the map canvas's visible extent
    LAYER = "layer"  # the polygons of a layer, optionally its selected features only
    RECTANGLE = "rectangle"  # a rectangle drawn on the map


@dataclass(frozen=True)
class CaptionParams:
    """Every choice of the dialog (the token itself lives in the authentication database: see :mod:`.auth`)."""

    #: The raster layers of the dates, in time order (two: BEFORE and AFTER; more: a series).
    layer_ids: tuple[str, ...] = ()
    #: Each layer's date as typed (2016, 2016-05, 2016-05-12; "" where unknown): the features' dates.
    dates: tuple[str, ...] = ()
    area_mode: AreaMode = AreaMode.OVERLAP
    area_layer_id: str = ""
    selected_only: bool = False
    #: The rectangle drawn on the map (xmin, ymin, xmax, ymax) and its CRS (WKT).
    rectangle: tuple[float, float, float, float] | None = None
    rectangle_crs: str = ""
    tile_size: int = 384
    #: Pixels ("32") or a share of the tile ("10%").
    overlap: str = "0"
    #: Metres per pixel; None keeps BEFORE's native resolution.
    resolution: float | None = None
    #: One or three 1-based band numbers; None for the first three.
    bands: tuple[int, ...] | None = None
    #: Values mapped to 0 and 255 for data that is not 8-bit; None for a 2–98 % stretch.
    value_range: tuple[float, float] | None = None
    #: One backend URL, or several serving the same model (separated by commas, or one per line).
    backend_url: str = DEFAULT_BACKEND_URL
    #: Requests kept open at each backend; 0 for enough to keep three of its model batches queued.
    in_flight: int = 0
    #: Seconds a run keeps trying when no backend answers (kept in settings: ccexpert/retry_budget_s).
    retry_budget_s: float = RETRY_BUDGET_S
    #: The QGIS authentication configuration holding the backend token ("" for none).
    auth_config_id: str = ""
    output: str = ""
    layer_name: str = schema.CAPTIONS_LAYER
    batch_size: int = 8
    #: A series of three or more dates: also caption the first date against the last (as --first-to-last).
    first_to_last: bool = False
    #: Areas that need more tiles are refused (a mistyped resolution can ask for billions).
    max_tiles: int = run_contract.DEFAULT_MAX_TILES

    def save(self, settings: QgsSettings | None = None) -> None:
        """Remember these choices (one JSON value per field under ``ccexpert/``)."""
        settings = settings or QgsSettings()
        for name, value in asdict(self).items():
            settings.setValue(f"{SETTINGS_GROUP}/{name}", json.dumps(value))

    @classmethod
    def load(cls, settings: QgsSettings | None = None) -> "CaptionParams":
        """The choices remembered last time; defaults for anything missing or unreadable."""
        settings = settings or QgsSettings()
        values = {}
        for spec in fields(cls):
            text = settings.value(f"{SETTINGS_GROUP}/{spec.name}", None)
            if text is None:
                continue
            try:
                values[spec.name] = json.loads(text)
            except (TypeError, ValueError):
                continue
        params = cls(**values)
        try:
            mode = AreaMode(params.area_mode)
        except ValueError:
            mode = AreaMode.OVERLAP
        # JSON gives lists where the fields hold tuples.
        rectangle, value_range = params.rectangle, params.value_range
        return replace(
            params, area_mode=mode, layer_ids=tuple(params.layer_ids), dates=tuple(params.dates),
            rectangle=None if rectangle is None else (rectangle[0], rectangle[1], rectangle[2], rectangle[3]),
            bands=None if params.bands is None else tuple(params.bands),
            value_range=None if value_range is None else (value_range[0], value_range[1]),
        )


def parse_bands(text: str) -> tuple[int, ...] | None:
    """``"4,3,2"`` → (4, 3, 2); empty → None (the first three bands)."""
    if not text.strip():
        return None
    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise CaptionRunError(
            f"bands: give one or three band numbers separated by commas (e.g. 4,3,2), not '{text}'"
        ) from None
    if len(bands) not in (1, 3):
        raise CaptionRunError(f"bands: give one or three band numbers, not {len(bands)}")
    return bands


def parse_backend_urls(text: str) -> tuple[str, ...]:
    """The backend URLs in ``text`` (one per line, or separated by commas), checked, each once, in order."""
    urls: list[str] = []
    for part in text.replace(",", "\n").splitlines():
        if not part.strip():
            continue
        try:
            url = protocol.check_backend_url(part)
        except ValueError as error:
            raise CaptionRunError(str(error)) from None
        if url not in urls:
            urls.append(url)
    if not urls:
        raise CaptionRunError(f"give the URL of a backend (e.g. {DEFAULT_BACKEND_URL})")
    return tuple(urls)


def _raster_layer(project: QgsProject, layer_id: str, what: str) -> QgsRasterLayer:
    layer = project.mapLayer(layer_id) if layer_id else None
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise CaptionRunError(f"choose the {what} (no valid layer is selected)")
    return layer


def _vector_layer(project: QgsProject, layer_id: str, what: str) -> QgsVectorLayer:
    layer = project.mapLayer(layer_id) if layer_id else None
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise CaptionRunError(f"choose the {what} (no valid layer is selected)")
    return layer


def raster_input(layer: QgsRasterLayer, role: str) -> RasterInput:
    """A raster layer as the job reads it: through GDAL, so only layers of QGIS's gdal provider."""
    if layer.providerType() != "gdal":
        raise CaptionRunError(
            f"{role} layer '{layer.name()}' comes from the {layer.providerType()} provider: the plugin reads rasters "
            "that GDAL opens (GeoTIFF, VRT, JPEG2000…); save it as a GeoTIFF first (Export › Save As…)"
        )
    return RasterInput.from_source(layer.source())


def job_from_params(
    params: CaptionParams, project: QgsProject, canvas_extent: QgsRectangle, canvas_crs: QgsCoordinateReferenceSystem,
    token: str,
) -> Job:
    """The run these choices describe; the area is resolved now, in the BEFORE layer's CRS."""
    if len(params.layer_ids) < 2:
        raise CaptionRunError("choose two or more raster layers, one per date")
    roles = run_contract.date_roles(len(params.layer_ids))
    layers = [_raster_layer(project, layer_id, f"{role} raster layer") for layer_id, role in
              zip(params.layer_ids, roles)]
    before_layer = layers[0]
    target, context = before_layer.crs(), project.transformContext()
    area = None
    if params.area_mode == AreaMode.CANVAS:
        area = rectangle_in_crs(canvas_extent, canvas_crs, target, context, "the map extent")
    elif params.area_mode == AreaMode.RECTANGLE:
        if params.rectangle is None:
            raise CaptionRunError("draw a rectangle on the map first (Area › Draw on map)")
        crs = QgsCoordinateReferenceSystem.fromWkt(params.rectangle_crs)
        area = rectangle_in_crs(QgsRectangle(*params.rectangle), crs, target, context, "the drawn rectangle")
    elif params.area_mode == AreaMode.LAYER:
        layer = _vector_layer(project, params.area_layer_id, "polygon layer of the area")
        if params.selected_only and layer.selectedFeatureCount() == 0:
            raise CaptionRunError(f"no feature of '{layer.name()}' is selected: select some, or use all features")
        features = layer.getSelectedFeatures() if params.selected_only else layer.getFeatures()
        area = polygons_in_crs(
            (f.geometry() for f in features), layer.crs(), target, context, f"the layer '{layer.name()}'"
        )
    return Job(
        rasters=tuple(raster_input(layer, role) for layer, role in zip(layers, roles)), dates=params.dates,
        output=params.output, backend_urls=parse_backend_urls(params.backend_url), token=token, area=area,
        tile_size=params.tile_size, overlap=params.overlap, resolution=params.resolution, bands=params.bands,
        value_range=params.value_range, batch_size=params.batch_size, layer_name=params.layer_name,
        in_flight=params.in_flight or None, retry_budget_s=params.retry_budget_s,
        first_to_last=params.first_to_last and len(layers) > 2, max_tiles=params.max_tiles,
    )


def run_title(dates: Sequence[str], rasters: int, layer_name: str) -> str:
    """A run's layer name in the project: ``CCExpert 2016→2021`` (the first and last of ``rasters`` dates, where
    every one is given), else the output layer's name (``CCExpert captions``)."""
    given = [text.strip() for text in dates if text.strip()]
    if len(given) == rasters >= 2:
        return f"CCExpert {given[0]}→{given[-1]}"
    return f"CCExpert {layer_name}"


def result_title(params: CaptionParams) -> str:
    """The dialog's run's layer name (:func:`run_title`)."""
    return run_title(params.dates, len(params.layer_ids), params.layer_name)


def distinct_name(title: str, taken: set[str]) -> str:
    """``title``, or ``title (2)``, ``title (3)``… where a layer of the project has that name already."""
    name, number = title, 1
    while name in taken:
        number += 1
        name = f"{title} ({number})"
    return name


def check_dates(texts: tuple[str, ...], names: list[str]) -> None:
    """Refuse typed dates that are not dates, or that are out of time order where every date is given (the run
    contract's rule: each must end before the next begins)."""
    try:
        run_contract.parse_labels(list(texts), names)
    except run_contract.RunRefused as error:
        raise CaptionRunError(str(error)) from None
