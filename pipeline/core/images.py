"""The one image decoder: a listed set of formats, a pixel cap checked from the header, errors as results.

Every reader of images (the score stage, the training and evaluation loaders, the report's thumbnails) decodes
through `decode_image`. PIL is told which formats it may try (`ACCEPTED_FORMATS`), so a file in any other format,
whatever its name (an EPS named `.jpg` would otherwise reach Ghostscript), is refused before a decoder runs. The
pixel count comes from the header and is checked before any pixel is decoded, so a decompression bomb costs a
header read. A corrupt or hostile image is a result (`decodable=False`, `decode_error=...`), never an exception.

`image_format` names an image's format from its first bytes: the download stage asks it before OpenCV (which reads
formats PIL does not, such as Radiance HDR, and has no pixel cap of ours) sees a byte.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

DEFAULT_MAX_PIXELS = 40_000_000  # ~6300x6300; the web has bigger images, but not ones worth training on
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # PIL format names; nothing else is opened
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # sample members holding an image
# First bytes of each accepted format, then of image formats some decoder would read but winnow refuses.
_ACCEPTED_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                   (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_REFUSED_MAGIC = ((b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"), (b"v/1\x01", "OpenEXR"),
                  (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"8BPS", "Photoshop"),
                  (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
                  (b"\x59\xa6\x6a\x95", "Sun raster"),
                  (b"PF\n", "PFM"), (b"Pf\n", "PFM"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"))
_PNM = re.compile(rb"^P[1-7]\s")


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


class UndecodableImage(ValueError):
    """An image that does not decode, is in a refused format, or has too many pixels."""


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<bytes>", text)  # no memory addresses: reruns give equal rows
    return f"{type(err).__name__}: {text}"[:200]


def image_format(data: bytes) -> tuple[str | None, str | None]:
    """(accepted PIL format name, None), (None, refused format's name), or (None, None) for bytes that are not a
    known image format; from the first bytes only."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", None
    for magic, name in _ACCEPTED_MAGIC:
        if head.startswith(magic):
            return name, None
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return None, name
    return None, "PNM" if _PNM.match(head) else None


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, Image.Image | None]:
    """Decode to RGB; return the image's info and the image (None when it does not decode)."""
    if data is None:
        return ImageInfo(None, None, 0, False, "missing: no image member in the sample"), None
    width = height = None
    refused = image_format(data)[1]
    if refused:
        return ImageInfo(None, None, len(data), False, f"RefusedFormat: {refused} is not one of "
                                                        f"{', '.join(ACCEPTED_FORMATS)}"), None
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) below 2x its own bomb limit; ours is checked explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
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


def open_rgb(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The decoded RGB image, or UndecodableImage with the reason (for loaders that skip and count)."""
    info, img = decode_image(data, max_pixels)
    if img is None:
        raise UndecodableImage(info.decode_error)
    return img
