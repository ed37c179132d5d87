"""CCExpert for QGIS: caption the changes between two raster layers over an area, into a GeoPackage layer."""


def classFactory(iface):  # noqa: N802 (QGIS's entry point)
    """QGIS's entry point: the plugin object."""
    from .plugin import CCExpertPlugin

    return CCExpertPlugin(iface)
