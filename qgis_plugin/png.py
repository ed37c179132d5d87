"""Tiles as lossless image bytes for the backend: uncompressed TIFF for a backend on this machine, fast PNG for one
across a network (the core's ``encode_array`` makes the same choice).

numpy, zlib and struct only: no Qt, no Pillow (QGIS's Python may lack it), and safe in any thread. Per 384 px RGB
tile image on a 2-core machine (bench/plugin_saturation.py; bench/RESULTS.md): Qt's PNG encoder 20 ms (15 ms at
quality 80, i.e. zlib level 1), this PNG writer 5 ms at about the same size, this TIFF writer 0.02 ms. The PNG
writer owes its speed to PNG's "up" row filter (each row minus the row above: one numpy subtraction) followed by
zlib's run-length strategy: aerial imagery has few long repeats for a full deflate search to find, and the filtered
rows compress about as well (283 KB against Qt's 274 KB on the benchmark's tiles).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2
_TIFF_SHORT, _TIFF_LONG = 3, 4


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An H×W×3 uint8 array as PNG bytes (8-bit RGB, "up" filter, zlib level 1 with run-length matching)."""
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    data = deflate.compress(filtered.data) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def tiff_bytes(rgb: np.ndarray) -> bytes:
    """An H×W×3 uint8 array as a baseline TIFF: little-endian, uncompressed, pixel-interleaved, one strip."""
    height, width, _ = rgb.shape
    pixels = np.ascontiguousarray(rgb, dtype=np.uint8).data
    entries = [  # (tag, type, count, value), in ascending tag order as TIFF requires
        (256, _TIFF_LONG, 1, width),  # ImageWidth
        (257, _TIFF_LONG, 1, height),  # ImageLength
        (258, _TIFF_SHORT, 3, 0),  # BitsPerSample: 8, 8, 8 (stored after the IFD)
        (259, _TIFF_SHORT, 1, 1),  # Compression: none
        (262, _TIFF_SHORT, 1, 2),  # PhotometricInterpretation: RGB
        (273, _TIFF_LONG, 1, 0),  # StripOffsets (the pixels, after the IFD)
        (277, _TIFF_SHORT, 1, 3),  # SamplesPerPixel
        (278, _TIFF_LONG, 1, height),  # RowsPerStrip: one strip
        (279, _TIFF_LONG, 1, pixels.nbytes),  # StripByteCounts
        (284, _TIFF_SHORT, 1, 1),  # PlanarConfiguration: pixel-interleaved
    ]
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    pixels_offset = bits_offset + 6
    ifd = [struct.pack("<H", len(entries))]
    for tag, kind, count, value in entries:
        value = {258: bits_offset, 273: pixels_offset}.get(tag, value)
        if kind == _TIFF_SHORT and count == 1:
            ifd.append(struct.pack("<HHIHH", tag, kind, count, value, 0))  # a SHORT sits left-justified
        else:
            ifd.append(struct.pack("<HHII", tag, kind, count, value))
    ifd.append(struct.pack("<I", 0))  # no next IFD
    return b"".join([b"II*\x00", struct.pack("<I", ifd_offset), *ifd, struct.pack("<HHH", 8, 8, 8), pixels])


def encode_tile(rgb: np.ndarray, compress: bool) -> bytes:
    """Lossless bytes of a tile image: PNG where bytes cost (``compress``: a backend across a network), else TIFF."""
    return png_bytes(rgb) if compress else tiff_bytes(rgb)
