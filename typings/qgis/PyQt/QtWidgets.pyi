# qgis.PyQt.QtWidgets is PyQt's QtWidgets (QGIS re-exports it so that plugins need not name PyQt5 or PyQt6).
from PyQt5.QtWidgets import *  # noqa: F403
