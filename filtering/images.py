"""Image signals: size, aspect ratio, bytes, whether it decodes (and why not), and its exact and perceptual hashes.

A corrupt or hostile image is a result (`decodable=False`, `decode_error=...`), never an exception: one bad file
among millions must not fail a shard. Pixel counts are checked from the header before any pixel is decoded, so a
decompression bomb costs a header read.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000  # ~6300x6300; the web has bigger images, but not ones worth training on


@dataclass
class ImageInfo:
    width: int | None
    height: int | None
    image_bytes: int
    decodable: bool
    decode_error: str | None

    @property
    def aspect_ratio(self) -> float | None:
        """Long side over short side (>= 1), so one threshold covers both portrait and landscape."""
        if not self.width or not self.height:
            return None
        return max(self.width, self.height) / min(self.width, self.height)


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<bytes>", text)  # no memory addresses: reruns give equal rows
    return f"{type(err).__name__}: {text}"[:200]


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, Image.Image | None]:
    """Decode to RGB; return the image's info and the image (None when it does not decode)."""
    if data is None:
        return ImageInfo(None, None, 0, False, "missing: no image member in the sample"), None
    width = height = None
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) below 2x its own bomb limit; ours is checked explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                return ImageInfo(width, height, len(data), False,
                                 f"TooManyPixels: {width}x{height} > {max_pixels} pixels"), None
            img.load()  # decodes every pixel: a truncated file fails here, not later in a model actor
            rgb = img.convert("RGB")
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) on bad input
        return ImageInfo(width, height, len(data), False, _error(err)), None
    if width == 0 or height == 0:
        return ImageInfo(width, height, len(data), False, "EmptyImage: zero width or height"), None
    return ImageInfo(width, height, len(data), True, None), rgb


def sha256_hex(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def phash_hex(img: Image.Image | None) -> str | None:
    """64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits; near duplicates differ in few bits."""
    if img is None:
        return None
    return str(imagehash.phash(img))


def phash_to_uint64(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)
