"""The project's pure modules, shared rather than re-implemented: the tile grid, the pixel rules (bands, stretch,
nodata), the captions layer's schema and default style, and the backend's wire format.

The plugin zip carries copies of ``ccexpert_core/geo/grid.py``, ``ccexpert_core/geo/pixels.py``,
``ccexpert_core/geo/schema.py`` and ``ccexpert_core/protocol.py`` in ``bundled/`` (``make plugin`` puts them
there); in the repository (development, tests) they come from ``ccexpert_core`` itself.
"""

try:
    from .bundled import grid, pixels, protocol, schema
except ImportError:  # the repository: no bundled copies, the project's package is on the path
    from ccexpert_core import protocol
    from ccexpert_core.geo import grid, pixels, schema

__all__ = ["grid", "pixels", "protocol", "schema"]
