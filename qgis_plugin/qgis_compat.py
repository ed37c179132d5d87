"""Where QGIS versions, and the PyQGIS stubs, spell things differently: one place, so that the rest of the plugin
reads the same on QGIS 3.22 (Debian 12's, the oldest supported) and on QGIS 4 (Qt 6).

The stubs the plugin is type-checked against describe a recent QGIS; names that only 3.22 has are looked up by
``getattr`` here (they are typed as what the recent name would be). QGIS's singletons are never None once QGIS
runs, though the stubs type them optional.
"""

from __future__ import annotations

from typing import Any

import qgis.core as _core
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsAuthManager,
    QgsLocatorResult,
    QgsMapLayerProxyModel,
    QgsProcessing,
    QgsProcessingParameterNumber,
    QgsProcessingRegistry,
    QgsProject,
    QgsTaskManager,
    QgsUnitTypes,
    QgsWkbTypes,
)

#: Processing's error for a run that cannot go on (declared by SIP at run time: the stubs lack it).
ProcessingException: type[Exception] = _core.QgsProcessingException  # type: ignore[attr-defined]


def _renamed(new_owner: object, new_enum: str, old_owner: object, old_enum: str, new: str, old: str) -> Any:
    """``new_owner.new_enum.new`` where this QGIS has it, else 3.22's ``old_owner.old_enum.old``."""
    if hasattr(new_owner, new_enum):
        return getattr(getattr(new_owner, new_enum), new)
    return getattr(getattr(old_owner, old_enum), old)


# Layer filters moved to Qgis.LayerFilter in 3.34.
RASTER_LAYERS = _renamed(Qgis, "LayerFilter", QgsMapLayerProxyModel, "Filter", "RasterLayer", "RasterLayer")
POLYGON_LAYERS = _renamed(Qgis, "LayerFilter", QgsMapLayerProxyModel, "Filter", "PolygonLayer", "PolygonLayer")
# Processing's source and number types moved to Qgis in 3.36.
RASTER_SOURCE = _renamed(Qgis, "ProcessingSourceType", QgsProcessing, "SourceType", "Raster", "TypeRaster")
POLYGON_SOURCE = _renamed(
    Qgis, "ProcessingSourceType", QgsProcessing, "SourceType", "VectorPolygon", "TypeVectorPolygon"
)
INTEGER = _renamed(Qgis, "ProcessingNumberParameterType", QgsProcessingParameterNumber, "Type", "Integer", "Integer")
DOUBLE = _renamed(Qgis, "ProcessingNumberParameterType", QgsProcessingParameterNumber, "Type", "Double", "Double")
# Distance units moved to Qgis.DistanceUnit in 3.30.
DEGREES = _renamed(Qgis, "DistanceUnit", QgsUnitTypes, "DistanceUnit", "Degrees", "DistanceDegrees")
# Geometry types moved to Qgis.GeometryType in 3.30.
POLYGON_GEOMETRY = _renamed(Qgis, "GeometryType", QgsWkbTypes, "GeometryType", "Polygon", "PolygonGeometry")


def project() -> QgsProject:
    """The project open in QGIS."""
    current = QgsProject.instance()
    assert current is not None, "QGIS always has a project"
    return current


def processing_registry() -> QgsProcessingRegistry:
    """QGIS's Processing registry."""
    registry = QgsApplication.processingRegistry()
    assert registry is not None, "QGIS always has a Processing registry"
    return registry


def task_manager() -> QgsTaskManager:
    """QGIS's background task manager."""
    manager = QgsApplication.taskManager()
    assert manager is not None, "QGIS always has a task manager"
    return manager


def auth_manager() -> QgsAuthManager:
    """QGIS's authentication manager."""
    manager = QgsApplication.authManager()
    assert manager is not None, "QGIS always has an authentication manager"
    return manager


def locator_user_data(result: QgsLocatorResult) -> Any:
    """A locator result's user data: an attribute on 3.22, ``userData()`` on later QGIS."""
    value = getattr(result, "userData", None)
    return value() if callable(value) else value
