"""The project's pure modules, shared rather than re-implemented: the tile grid, the pixel rules (bands, stretch,
nodata), the captions layer's schema and default style, the backend's wire format, the in-flight scheduler and
failover between backends, the checks on a run's files (outputs never inputs, one run per output), date labels
(parsing, time order, dates from raster metadata and names), where a raster is (a file or a URL, named and shown
without credentials, GDAL's settings for remote reads), the run contract (the rules of one run, the command's
and the plugin's alike), the kind of change a caption names, the ranking of a layer's tiles for a query in words, and
the calibration of p_right on the analyst's reviews.

The plugin zip carries copies of ``ccexpert_core/geo/grid.py``, ``ccexpert_core/geo/pixels.py``,
``ccexpert_core/geo/schema.py``, ``ccexpert_core/protocol.py``, ``ccexpert_core/inflight.py``,
``ccexpert_core/geo/run_files.py``, ``ccexpert_core/geo/dates.py``, ``ccexpert_core/geo/run_contract.py``,
``ccexpert_core/geo/sources.py``, ``ccexpert_core/captions.py``, ``ccexpert_core/geo/search.py`` and
``ccexpert_core/geo/calibration.py`` in ``bundled/`` (``make plugin`` puts them there, side by side: search,
calibration and the run contract import their neighbours relatively); in the repository (development, tests) they
come from ``ccexpert_core`` itself.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type checker reads the project's modules, which the bundled ones copy byte for byte
    from ccexpert_core import captions, inflight, protocol
    from ccexpert_core.geo import calibration, dates, grid, pixels, run_contract, run_files, schema, search, sources
else:
    try:
        from .bundled import (
            calibration,
            captions,
            dates,
            grid,
            inflight,
            pixels,
            protocol,
            run_contract,
            run_files,
            schema,
            search,
            sources,
        )
    except ImportError:  # the repository: no bundled copies, the project's package is on the path
        from ccexpert_core import captions, inflight, protocol
        from ccexpert_core.geo import calibration, dates, grid, pixels, run_contract, run_files, schema, search, sources

__all__ = [
    "calibration", "captions", "dates", "grid", "inflight", "pixels", "protocol", "run_contract", "run_files", "schema",
    "search", "sources",
]
