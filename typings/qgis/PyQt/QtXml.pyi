# qgis.PyQt.QtXml is PyQt's QtXml (QGIS re-exports it so that plugins need not name PyQt5 or PyQt6).
from PyQt5.QtXml import *  # noqa: F403
