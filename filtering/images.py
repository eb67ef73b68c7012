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


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def phash_to_uint64(hexes) -> np.ndarray:
    """Hex phashes (a sequence, or a pyarrow string array) -> uint64. Hashes of 16 digits (imagehash's 8x8) are
    parsed vectorised, from the strings' bytes; anything else by Python's int()."""
    import pyarrow as pa

    arr = hexes if isinstance(hexes, pa.Array | pa.ChunkedArray) else pa.array(list(hexes), type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=pa.string())
    n = len(arr)
    if n and arr.null_count == 0 and pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
        if np.all(np.diff(offsets) == 16):
            raw = np.frombuffer(arr.buffers()[2], np.uint8, 16 * n, int(offsets[0]))
            nibbles = _HEX[raw].reshape(n, 8, 2)  # 16 bytes a row, no wider: pools of millions
            if not (nibbles == 255).any():
                packed = (nibbles[:, :, 0] << np.uint8(4)) | nibbles[:, :, 1]  # (n, 8) bytes, most significant first
                return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)
    return np.array([int(h, 16) for h in arr.to_pylist()], dtype=np.uint64)
