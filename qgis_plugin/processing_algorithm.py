"""``ccexpert:captionchanges``: two rasters, an extent or polygons, tiling options, a backend → a GeoPackage."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing, QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputNumber, QgsProcessingParameterAuthConfig,
    QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource, QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsVectorLayer,
)

from .area import polygons_in_crs, rectangle_in_crs
from .auth import load_token
from .captions_gpkg import CAPTIONED, DEFAULT_LAYER, FAILED, SKIPPED_NODATA
from .errors import CaptionRunError
from .job import RETRY_BUDGET_S, Job, run_job
from .params import DEFAULT_BACKEND_URL, parse_backend_urls, parse_bands, raster_input
from .result_layer import layer_uri, style_and_keep

_COUNTS = {"CAPTIONED": CAPTIONED, "SKIPPED_NODATA": SKIPPED_NODATA, "FAILED": FAILED}


class _StyleCaptions(QgsProcessingLayerPostProcessorInterface):
    """Styles the result layer once Processing has loaded it (on the main thread)."""

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        if isinstance(layer, QgsVectorLayer):
            style_and_keep(layer)


#: Processing keeps only a pointer to a post-processor: this one lives as long as the module.
_STYLER = _StyleCaptions()


class CaptionChangesAlgorithm(QgsProcessingAlgorithm):
    """Caption every tile of the area into the GeoPackage's layer; running again resumes."""

    def name(self) -> str:
        return "captionchanges"

    def displayName(self) -> str:  # noqa: N802
        return "Caption changes between two rasters"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Cuts the area into tiles on BEFORE's grid (AFTER is aligned onto it when needed), sends both dates of "
            "each tile to a CCExpert backend (ccexpert serve) and writes one polygon per tile, with its caption, "
            "change flag and confidence, to a layer of a GeoPackage, batch by batch. The area is the polygons of AREA "
            "if given, else EXTENT, else wherever both rasters overlap. Running again with the same output resumes. "
            "BACKEND_URL may list several backends of one model (comma-separated): each is kept busy, and one that "
            "stops answering hands its batches to the others. IN_FLIGHT is how many requests each backend has open "
            "(0: enough for three of its model batches); RETRY_BUDGET how long the run keeps trying when no backend "
            "answers. The backend token is read from an authentication configuration (Basic, the token as password)."
        )

    def createInstance(self) -> "CaptionChangesAlgorithm":  # noqa: N802
        return CaptionChangesAlgorithm()

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After raster"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (if no area layer)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AREA", "Area polygons", [QgsProcessing.TypeVectorPolygon], optional=True,
        ))
        integer, double = QgsProcessingParameterNumber.Integer, QgsProcessingParameterNumber.Double
        self.addParameter(QgsProcessingParameterNumber("TILE_SIZE", "Tile size (px)", integer, 384, minValue=16))
        self.addParameter(QgsProcessingParameterString("OVERLAP", "Overlap (pixels, or percent like 10%)", "0"))
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution (m/px, 0 = BEFORE's native)", double, 0.0, minValue=0.0,
        ))
        self.addParameter(QgsProcessingParameterString("BANDS", "Bands (e.g. 4,3,2; empty = the first three)", "",
                                                       optional=True))
        for name, label in (("VALUE_MIN", "Value mapped to 0"), ("VALUE_MAX", "Value mapped to 255")):
            self.addParameter(QgsProcessingParameterNumber(
                name, f"{label} (empty = 2–98 % stretch for data that is not 8-bit)", double, optional=True,
            ))
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", "Batch size (tiles)", integer, 8, minValue=1))
        self.addParameter(QgsProcessingParameterString(
            "BACKEND_URL", "Backend URL (several: comma-separated or one per line)", DEFAULT_BACKEND_URL, multiLine=True,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "IN_FLIGHT", "Requests in flight per backend (0 = three model batches' worth)", integer, 0, minValue=0,
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "RETRY_BUDGET", "Keep trying for (s) when no backend answers", double, RETRY_BUDGET_S, minValue=0.0,
        ))
        self.addParameter(QgsProcessingParameterAuthConfig("AUTH_CONFIG", "Backend token", optional=True))
        self.addParameter(QgsProcessingParameterString("LAYER_NAME", "Layer name", DEFAULT_LAYER))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "GeoPackage", "GeoPackage (*.gpkg)"))
        for name, status in _COUNTS.items():
            self.addOutput(QgsProcessingOutputNumber(name, f"Tiles {status.replace('_', ' ')} by this run"))

    def _job(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Job:
        before = self.parameterAsRasterLayer(parameters, "BEFORE", context)
        after = self.parameterAsRasterLayer(parameters, "AFTER", context)
        if before is None or after is None:
            raise CaptionRunError("give a BEFORE and an AFTER raster")
        target, transforms = before.crs(), context.transformContext()
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
        return Job(
            before=raster_input(before, "BEFORE"), after=raster_input(after, "AFTER"), output=output,
            backend_urls=parse_backend_urls(self.parameterAsString(parameters, "BACKEND_URL", context)),
            token=load_token(self.parameterAsString(parameters, "AUTH_CONFIG", context)), area=area,
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            overlap=self.parameterAsString(parameters, "OVERLAP", context) or "0",
            resolution=resolution or None, bands=parse_bands(self.parameterAsString(parameters, "BANDS", context)),
            value_range=value_range, batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            layer_name=self.parameterAsString(parameters, "LAYER_NAME", context) or DEFAULT_LAYER,
            in_flight=self.parameterAsInt(parameters, "IN_FLIGHT", context) or None,
            retry_budget_s=self.parameterAsDouble(parameters, "RETRY_BUDGET", context),
        )

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        try:
            job = self._job(parameters, context)
        except CaptionRunError as error:
            raise QgsProcessingException(str(error)) from None
        summary = run_job(job, feedback)
        if summary.error and not summary.canceled:
            raise QgsProcessingException(summary.message())
        feedback.pushInfo(summary.message())
        if summary.written or summary.already_done:
            details = QgsProcessingContext.LayerDetails(job.layer_name, context.project(), "OUTPUT")
            details.setPostProcessor(_STYLER)
            context.addLayerToLoadOnCompletion(layer_uri(job.output, job.layer_name), details)
        return {"OUTPUT": job.output, **{name: summary.counts[status] for name, status in _COUNTS.items()}}
