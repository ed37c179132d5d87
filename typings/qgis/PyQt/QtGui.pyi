# qgis.PyQt.QtGui is PyQt's QtGui (QGIS re-exports it so that plugins need not name PyQt5 or PyQt6).
from PyQt5.QtGui import *  # noqa: F403
