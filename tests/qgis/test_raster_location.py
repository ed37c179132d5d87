"""Where a raster is, in QGIS's Python, on the module the plugin bundles: the same cases as the project's Python."""

from raster_location_cases import *  # noqa: F403 — the shared cases are this module's tests
