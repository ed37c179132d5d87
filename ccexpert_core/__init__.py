"""CCExpert: describe in plain language what changed between two dates of aerial or satellite imagery.

Importing this package is cheap: torch, transformers, rasterio and Qt are imported only by the subpackages
that need them (``model``, ``inference``, ``training``, ``geo``).
"""

__version__ = "0.1.0"
