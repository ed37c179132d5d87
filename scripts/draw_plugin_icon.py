"""Draw the QGIS plugin's icon (qgis_plugin/icon.png) with QPainter: a 2×2 tile grid over a field, one tile
outlined red where a building appeared, and a speech bubble for its caption.

Run with QGIS's Python: QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/draw_plugin_icon.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QBrush, QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen, QPolygonF

SIZE = 128
OUT = Path(__file__).resolve().parents[1] / "qgis_plugin" / "icon.png"


def draw() -> QImage:
    """The icon, SIZE × SIZE, transparent around a rounded square."""
    image = QImage(SIZE, SIZE, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setPen(Qt.NoPen)
    painter.setBrush(QColor("#6f9a4a"))  # fields
    painter.drawRoundedRect(QRectF(4, 4, 120, 120), 18, 18)
    painter.setBrush(QColor("#8fb35c"))
    painter.drawRect(QRectF(4, 64, 60, 60).adjusted(0, 0, 0, -14))
    painter.setBrush(QColor("#c9c5b8"))  # a road
    painter.drawRect(QRectF(58, 4, 12, 120))
    painter.setBrush(QColor("#c0503c"))  # the new building
    painter.drawRect(QRectF(20, 20, 26, 22))
    painter.setBrush(Qt.NoBrush)
    painter.setPen(QPen(QColor(255, 255, 255, 200), 2))  # the tile grid
    painter.drawLine(QPointF(64, 8), QPointF(64, 120))
    painter.drawLine(QPointF(8, 64), QPointF(120, 64))
    painter.setPen(QPen(QColor("#e8231a"), 5))  # the changed tile
    painter.drawRoundedRect(QRectF(9, 9, 52, 52), 4, 4)
    bubble = QPainterPath()  # the caption
    bubble.addRoundedRect(QRectF(62, 70, 60, 40), 10, 10)
    bubble.addPolygon(QPolygonF([QPointF(70, 104), QPointF(58, 120), QPointF(84, 108)]))
    painter.setPen(QPen(QColor("#1f2d3d"), 2))
    painter.setBrush(QBrush(QColor("white")))
    painter.drawPath(bubble.simplified())
    painter.setPen(QPen(QColor("#1f2d3d"), 4, cap=Qt.RoundCap))
    for y, length in ((82, 40), (92, 30)):
        painter.drawLine(QPointF(72, y), QPointF(72 + length, y))
    painter.end()
    return image


if __name__ == "__main__":
    app = QGuiApplication(sys.argv)
    if not draw().save(str(OUT)):
        sys.exit(f"could not write {OUT}")
    print(OUT)
