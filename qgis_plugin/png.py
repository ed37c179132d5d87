"""Tiles as PNG bytes for the backend, with Qt's encoder (QGIS's Python may lack Pillow)."""

from __future__ import annotations

import numpy as np
from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice
from qgis.PyQt.QtGui import QImage


def png_bytes(rgb: np.ndarray) -> bytes:
    """An H×W×3 uint8 array as lossless PNG bytes (QImage is safe to use in a task's thread)."""
    height, width, _ = rgb.shape
    pixels = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    # QImage wraps `pixels` without copying: it must stay referenced until the PNG is written.
    image = QImage(pixels, width, height, 3 * width, QImage.Format_RGB888)
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise RuntimeError("Qt could not encode a tile as PNG")
    buffer.close()
    return bytes(data)
