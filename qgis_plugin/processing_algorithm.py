"""``ccexpert:captionchanges``: two or more rasters in time order (with their dates), an extent or polygons,
tiling options, a backend → a GeoPackage (and, for a series, its history layer; for a model with a change map, its
changes layer).

Every parameter starts from the dialog's remembered choices (QgsSettings), so Processing, batch mode and the
modeler open where the analyst left the dialog.
"""

from __future__ import annotations

from typing import Any

from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .area import polygons_in_crs, rectangle_in_crs
from .auth import is_session_token, load_token
from .captions_gpkg import companion_layer
from .errors import CaptionRunError
from .job import Job, run_job
from .params import AreaMode, CaptionParams, parse_backend_urls, parse_bands, raster_input, run_title
from .qgis_compat import DOUBLE, INTEGER, POLYGON_SOURCE, RASTER_SOURCE, ProcessingException, project
from .result_layer import layer_uri, style_and_keep
from .shared_modules import run_contract, schema
from .styling import style_changes_layer, style_history_layer
from .temporal import set_temporal

_COUNTS = {"CAPTIONED": schema.CAPTIONED, "SKIPPED_NODATA": schema.SKIPPED_NODATA, "FAILED": schema.FAILED}


class _StyleLayer(QgsProcessingLayerPostProcessorInterface):
    """Styles a result layer once Processing has loaded it (on the main thread): captions (in time where every
    feature is dated), history or changes."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        if not isinstance(layer, QgsVectorLayer):
            return
        if self.kind == "history":
            style_history_layer(layer)
        elif self.kind == "changes":
            style_changes_layer(layer)
        else:
            style_and_keep(layer)
            undated = layer.getFeatures("\"date_before\" IS NULL OR \"date_after\" IS NULL")
            if layer.featureCount() and next(undated, None) is None:
                set_temporal(layer)


def _dates(text: str, count: int) -> tuple[str, ...]:
    """DATES as given: empty, or one date per layer separated by commas."""
    parts = tuple(part.strip() for part in text.split(",")) if text.strip() else ()
    if parts and len(parts) != count:
        raise CaptionRunError(f"DATES gives {len(parts)} dates for {count} layers: give one per layer, in order")
    return parts


class CaptionChangesAlgorithm(QgsProcessingAlgorithm):
    """Caption every tile and interval of the area into the GeoPackage's layer; running again resumes."""

    def __init__(self) -> None:
        super().__init__()
        #: This run's post-processors: Processing keeps only a pointer to each, and its context deletes them when
        #: it is done, so every run has its own (one shared by runs was gone by the second run of a session).
        self._stylers: list[_StyleLayer] = []

    def name(self) -> str:
        return "captionchanges"

    def displayName(self) -> str:  # noqa: N802
        return "Caption changes between dates"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Cuts the area into tiles on the first raster's grid (the others are aligned onto it when needed), sends "
            "each consecutive pair of dates of each tile to a CCExpert backend (ccexpert serve) and writes one "
            "polygon per tile and interval, with its caption, change flag, kind of change, dates and confidence, to "
            "a layer of a GeoPackage, batch by batch. LAYERS are two or more rasters in time order; DATES their "
            "dates (2016, 2016-05 or 2016-05-12, comma-separated, one per layer; optional), which the features "
            "carry and the Temporal Controller follows. Three or more dates also write a history layer (each "
            "tile's changes over the dates); a model with a change map, a changes layer. The area is the polygons "
            "of AREA if given, else EXTENT, else wherever every raster has pixels. Running again with the same "
            "output resumes. BACKEND_URL may list several backends of one model (comma-separated): each is kept "
            "busy, and one that stops answering hands its batches to the others. IN_FLIGHT is how many requests "
            "each backend has open (0: enough for three of its model batches); RETRY_BUDGET how long the run keeps "
            "trying when no backend answers. The backend token is read from an authentication configuration "
            "(Basic, the token as password). Every parameter starts from the dialog's last choices."
        )

    def createInstance(self) -> "CaptionChangesAlgorithm":  # noqa: N802
        return CaptionChangesAlgorithm()

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        chosen = CaptionParams.load()
        current = project()
        layers = [layer_id for layer_id in chosen.layer_ids if isinstance(current.mapLayer(layer_id), QgsRasterLayer)]
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "LAYERS", "Rasters, one per date, in time order", RASTER_SOURCE,
            layers if len(layers) == len(chosen.layer_ids) >= 2 else None,
        ))
        self.addParameter(QgsProcessingParameterString(
            "DATES", "Dates, one per raster (e.g. 2016, 2018, 2021; empty = undated)",
            ", ".join(chosen.dates) if any(chosen.dates) else "", optional=True,
        ))
        rectangle = ""
        if chosen.area_mode == AreaMode.RECTANGLE and chosen.rectangle is not None:
            xmin, ymin, xmax, ymax = chosen.rectangle
            crs = QgsCoordinateReferenceSystem.fromWkt(chosen.rectangle_crs).authid()
            rectangle = f"{xmin},{xmax},{ymin},{ymax}" + (f" [{crs}]" if crs else "")
        self.addParameter(QgsProcessingParameterExtent(
            "EXTENT", "Extent (if no area layer)", rectangle or None, optional=True,
        ))
        area = chosen.area_layer_id if chosen.area_mode == AreaMode.LAYER else ""
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AREA", "Area polygons", [POLYGON_SOURCE], area or None, optional=True,
        ))
        self.addParameter(QgsProcessingParameterBoolean(
            "FIRST_TO_LAST", "Also caption the first date against the last (three or more dates)", chosen.first_to_last,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "TILE_SIZE", "Tile size (px)", INTEGER, chosen.tile_size, minValue=32, maxValue=4096,
        ))
        self.addParameter(QgsProcessingParameterString(
            "OVERLAP", "Overlap (pixels, or percent like 10%)", chosen.overlap,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution (m/px, 0 = the first raster's native)", DOUBLE, chosen.resolution or 0.0,
            minValue=0.0,
        ))
        self.addParameter(QgsProcessingParameterString(
            "BANDS", "Bands (e.g. 4,3,2; empty = the first three)",
            "" if chosen.bands is None else ",".join(map(str, chosen.bands)), optional=True,
        ))
        low, high = chosen.value_range or (None, None)
        for name, label, value in (("VALUE_MIN", "Value mapped to 0", low), ("VALUE_MAX", "Value mapped to 255", high)):
            self.addParameter(QgsProcessingParameterNumber(
                name, f"{label} (empty = 2–98 % stretch for data that is not 8-bit)", DOUBLE, value, optional=True,
            ))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", "Batch size (pairs per request)", INTEGER, chosen.batch_size, minValue=1,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_TILES", "Refuse areas that need more tiles than", INTEGER, chosen.max_tiles, minValue=1,
        ))
        self.addParameter(QgsProcessingParameterString(
            "BACKEND_URL", "Backend URL (several: comma-separated or one per line)", chosen.backend_url,
            multiLine=True,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "IN_FLIGHT", "Requests in flight per backend (0 = three model batches' worth)", INTEGER,
            chosen.in_flight, minValue=0,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "RETRY_BUDGET", "Keep trying for (s) when no backend answers", DOUBLE, chosen.retry_budget_s,
            minValue=0.0,
        ))
        # A token the dialog kept for its session only is no configuration Processing could list.
        stored = "" if is_session_token(chosen.auth_config_id) else chosen.auth_config_id
        self.addParameter(QgsProcessingParameterAuthConfig(
            "AUTH_CONFIG", "Backend token", stored, optional=True,
        ))
        self.addParameter(QgsProcessingParameterString("LAYER_NAME", "Layer name", chosen.layer_name))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "GeoPackage", "GeoPackage (*.gpkg)", chosen.output or None,
        ))
        for name, status in _COUNTS.items():
            self.addOutput(QgsProcessingOutputNumber(name, f"Features {status.replace('_', ' ')} by this run"))

    def _job(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Job:
        layers = [layer for layer in self.parameterAsLayerList(parameters, "LAYERS", context)
                  if isinstance(layer, QgsRasterLayer)]
        if len(layers) < 2:
            raise CaptionRunError("give two or more rasters in LAYERS, one per date, in time order")
        target, transforms = layers[0].crs(), context.transformContext()
        area = None
        source = self.parameterAsSource(parameters, "AREA", context)
        if source is not None:
            area = polygons_in_crs(
                (f.geometry() for f in source.getFeatures()), source.sourceCrs(), target, transforms, "the area layer"
            )
        elif parameters.get("EXTENT"):
            extent = self.parameterAsExtent(parameters, "EXTENT", context)
            crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
            area = rectangle_in_crs(extent, crs if crs.isValid() else target, target, transforms, "the extent")
        low, high = parameters.get("VALUE_MIN"), parameters.get("VALUE_MAX")
        if (low is None) != (high is None):
            raise CaptionRunError("give both VALUE_MIN and VALUE_MAX, or neither")
        value_range = None
        if low is not None:
            value_range = (self.parameterAsDouble(parameters, "VALUE_MIN", context),
                           self.parameterAsDouble(parameters, "VALUE_MAX", context))
        resolution = self.parameterAsDouble(parameters, "RESOLUTION", context)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        roles = run_contract.date_roles(len(layers))
        # The remembered dates belong to the remembered layers: a script that gives other LAYERS and no DATES
        # means undated rasters, not the dialog's dates.
        dated = self.parameterAsString(parameters, "DATES", context) if "DATES" in parameters or \
            "LAYERS" not in parameters else ""
        return Job(
            rasters=tuple(raster_input(layer, role) for layer, role in zip(layers, roles)),
            dates=_dates(dated, len(layers)), output=output,
            backend_urls=parse_backend_urls(self.parameterAsString(parameters, "BACKEND_URL", context)),
            token=load_token(self.parameterAsString(parameters, "AUTH_CONFIG", context)), area=area,
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            overlap=self.parameterAsString(parameters, "OVERLAP", context) or "0",
            resolution=resolution or None, bands=parse_bands(self.parameterAsString(parameters, "BANDS", context)),
            value_range=value_range, batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            layer_name=self.parameterAsString(parameters, "LAYER_NAME", context) or schema.CAPTIONS_LAYER,
            in_flight=self.parameterAsInt(parameters, "IN_FLIGHT", context) or None,
            retry_budget_s=self.parameterAsDouble(parameters, "RETRY_BUDGET", context),
            first_to_last=self.parameterAsBoolean(parameters, "FIRST_TO_LAST", context) and len(layers) > 2,
            max_tiles=self.parameterAsInt(parameters, "MAX_TILES", context),
        )

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback | None,
    ) -> dict[str, Any]:
        feedback = feedback or QgsProcessingFeedback()
        try:
            job = self._job(parameters, context)
        except CaptionRunError as error:
            raise ProcessingException(str(error)) from None
        summary = run_job(job, feedback)
        if summary.error and not summary.canceled:
            raise ProcessingException(summary.message())
        feedback.pushInfo(summary.message())
        if summary.written or summary.already_done:
            # Named as the dialog names its layers: "CCExpert 2019→2023", "CCExpert 2019→2023 — history".
            title = run_title(job.dates, len(job.rasters), job.layer_name)
            loaded = {"captions": job.layer_name, **{kind: companion_layer(job.layer_name, kind)
                                                      for kind in ("history", "changes")}}
            for kind, name in loaded.items():
                if kind == "captions" or _has_layer(job.output, name):
                    shown = title if kind == "captions" else f"{title} — {kind}"
                    details = QgsProcessingContext.LayerDetails(shown, context.project(), "OUTPUT")
                    styler = _StyleLayer(kind)
                    self._stylers.append(styler)
                    details.setPostProcessor(styler)
                    context.addLayerToLoadOnCompletion(layer_uri(job.output, name), details)
        return {"OUTPUT": job.output, **{name: summary.counts[status] for name, status in _COUNTS.items()}}


def _has_layer(path: str, name: str) -> bool:
    """Whether the GeoPackage holds a layer of that name (a series' history, a change map's changes)."""
    dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
    return dataset is not None and dataset.GetLayerByName(name) is not None
