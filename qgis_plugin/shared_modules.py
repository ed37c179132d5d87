"""The project's pure modules, shared rather than re-implemented: the tile grid, the pixel rules (bands, stretch,
nodata), the captions layer's schema and default style, the backend's wire format, the in-flight scheduler and
failover between backends, and the checks on a run's files (outputs never inputs, one run per output).

The plugin zip carries copies of ``ccexpert_core/geo/grid.py``, ``ccexpert_core/geo/pixels.py``,
``ccexpert_core/geo/schema.py``, ``ccexpert_core/protocol.py``, ``ccexpert_core/inflight.py`` and
``ccexpert_core/geo/run_files.py`` in ``bundled/`` (``make plugin`` puts them there); in the repository
(development, tests) they come from ``ccexpert_core`` itself.
"""

try:
    from .bundled import grid, inflight, pixels, protocol, run_files, schema
except ImportError:  # the repository: no bundled copies, the project's package is on the path
    from ccexpert_core import inflight, protocol
    from ccexpert_core.geo import grid, pixels, run_files, schema

__all__ = ["grid", "inflight", "pixels", "protocol", "run_files", "schema"]
