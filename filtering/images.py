"""Image hashes: the exact (sha256 of the bytes) and the perceptual (DCT phash) hash of a sample's image.

Decoding itself (accepted formats, the pixel cap, errors as results) is `pipeline.core.images.decode_image`.
"""

from __future__ import annotations

import hashlib

import imagehash
import numpy as np
from PIL import Image


def sha256_hex(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def phash_hex(img: Image.Image | None) -> str | None:
    """64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits; near duplicates differ in few bits."""
    if img is None:
        return None
    return str(imagehash.phash(img))


def phash_to_uint64(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)
