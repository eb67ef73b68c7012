"""Bodies the server sends for faulty URLs: an HTML page posing as a JPEG, and a PNG decompression bomb."""

from __future__ import annotations

import math
import struct
import zlib

NOT_IMAGE_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>404 - Page moved</title></head>\n"
    b"<body><h1>This image has moved</h1><p>Please enable JavaScript to view this page.</p></body></html>\n"
)


def bomb_dims(pixels: int) -> tuple[int, int]:
    """(width, height) with width * height == pixels when a near-square factorisation exists, else just above."""
    side = math.isqrt(pixels)
    for w in range(side, max(side // 4, 1) - 1, -1):
        if pixels % w == 0:
            return pixels // w, w
    w = max(side, 1)
    return w, -(-pixels // w)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(pixels: int) -> tuple[bytes, int, int]:
    """A flat grey 8-bit PNG of `pixels` pixels; zlib squeezes the flat rows ~1000:1, so it is small in bytes."""
    width, height = bomb_dims(pixels)
    row = b"\x00" + b"\x80" * width  # filter byte "none", then grey pixels
    rows_per_block = max(1, (1 << 22) // len(row))
    comp = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(comp.compress(row * min(rows_per_block, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    return png, width, height


def hdr_bomb(width: int, height: int) -> bytes:
    """A flat Radiance HDR (`.hdr`) image, run-length encoded: about 8 bytes per 127 pixels on the wire, 12 bytes
    per pixel once decoded (OpenCV decodes it to float32 RGB). PIL cannot read the format; OpenCV can."""
    if not 8 <= width < 32768:
        raise ValueError("the new-style RLE scanline needs 8 <= width < 32768")
    runs = b"".join(bytes([128 + n, value]) for value in (128, 128, 128, 129)  # one RGBE channel at a time
                    for n in [127] * (width // 127) + ([width % 127] if width % 127 else []))
    scanline = bytes([2, 2, width >> 8, width & 0xFF]) + runs
    head = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    return head + scanline * height
