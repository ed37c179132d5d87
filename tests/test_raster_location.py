"""Where a raster is, in the project's Python (tests/qgis/test_raster_location.py runs the same cases in QGIS's)."""

from raster_location_cases import *  # noqa: F403 — the shared cases are this module's tests
