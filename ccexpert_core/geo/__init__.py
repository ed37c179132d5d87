"""Captioning a whole region from two rasters.

- :mod:`~ccexpert_core.geo.grid`: the tile grid over an area (pure Python + numpy; the QGIS plugin bundles it).
- :mod:`~ccexpert_core.geo.pixels`: band choice, 8-bit mapping, nodata of read values (pure Python + numpy;
  bundled too, so that the plugin's tiles are the command's).
- :mod:`~ccexpert_core.geo.sources`: where a raster is — a file, or a URL GDAL reads over HTTP or object storage —
  named and shown without credentials, and GDAL's settings for remote reads (pure Python; bundled too).
- :mod:`~ccexpert_core.geo.raster`: reading both dates on one grid with those rules (rasterio), and
  :mod:`~ccexpert_core.geo.stac`: a date given as a STAC item (pystac).
- :mod:`~ccexpert_core.geo.gpkg` and :mod:`~ccexpert_core.geo.captions_layer`: the GeoPackage output (sqlite3).
- :mod:`~ccexpert_core.geo.region`: the streaming pipeline behind ``ccexpert caption-region``.
- :mod:`~ccexpert_core.geo.report`: the self-contained HTML report.
- :mod:`~ccexpert_core.geo.search`: a captions layer's tiles ranked for a query in words, and
  :mod:`~ccexpert_core.geo.calibration`: ``p_right`` fitted on the analyst's reviews (both bundled in the plugin);
  :mod:`~ccexpert_core.geo.search_entries` and :mod:`~ccexpert_core.geo.calibrate` read and write them (sqlite3).

Nothing is imported here, so that importing one module (e.g. ``grid`` in QGIS) does not pull in rasterio.
"""
