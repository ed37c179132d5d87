"""The project's pure modules, shared rather than re-implemented: the tile grid, the pixel rules (bands, stretch,
nodata), the captions layer's schema and default style, the backend's wire format, the in-flight scheduler and
failover between backends, the checks on a run's files (outputs never inputs, one run per output), date labels
(parsing, time order, dates from raster metadata and names) and the kind of change a caption names.

The plugin zip carries copies of ``ccexpert_core/geo/grid.py``, ``ccexpert_core/geo/pixels.py``,
``ccexpert_core/geo/schema.py``, ``ccexpert_core/protocol.py``, ``ccexpert_core/inflight.py``,
``ccexpert_core/geo/run_files.py``, ``ccexpert_core/geo/dates.py`` and ``ccexpert_core/captions.py`` in
``bundled/`` (``make plugin`` puts them there); in the repository (development, tests) they come from
``ccexpert_core`` itself.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type checker reads the project's modules, which the bundled ones copy byte for byte
    from ccexpert_core import captions, inflight, protocol
    from ccexpert_core.geo import dates, grid, pixels, run_files, schema
else:
    try:
        from .bundled import captions, dates, grid, inflight, pixels, protocol, run_files, schema
    except ImportError:  # the repository: no bundled copies, the project's package is on the path
        from ccexpert_core import captions, inflight, protocol
        from ccexpert_core.geo import dates, grid, pixels, run_files, schema

__all__ = ["captions", "dates", "grid", "inflight", "pixels", "protocol", "run_files", "schema"]
