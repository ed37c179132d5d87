"""The project's two pure modules, shared rather than re-implemented: the tile grid and the backend's wire format.

The plugin zip carries copies of ``ccexpert_core/geo/grid.py`` and ``ccexpert_core/protocol.py`` in ``bundled/``
(``make plugin`` puts them there); in the repository (development, tests) they come from ``ccexpert_core`` itself.
"""

try:
    from .bundled import grid, protocol
except ImportError:  # the repository: no bundled copies, the project's package is on the path
    from ccexpert_core import protocol
    from ccexpert_core.geo import grid

__all__ = ["grid", "protocol"]
