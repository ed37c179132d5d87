# qgis.PyQt.QtCore is PyQt's QtCore (QGIS re-exports it so that plugins need not name PyQt5 or PyQt6).
from PyQt5.QtCore import *  # noqa: F403
