# qgis.PyQt.QtNetwork is PyQt's QtNetwork (QGIS re-exports it so that plugins need not name PyQt5 or PyQt6).
from PyQt5.QtNetwork import *  # noqa: F403
