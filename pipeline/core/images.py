"""The one image decoder: a listed set of formats, a pixel cap checked from the header, errors as results.

Every reader of images (the score stage, the training and evaluation loaders, the report's thumbnails) decodes
through `decode_image`. PIL is told which formats it may try (`ACCEPTED_FORMATS`), so a file in any other format,
whatever its name (an EPS named `.jpg` would otherwise reach Ghostscript), is refused before a decoder runs. The
pixel count comes from the header and is checked before any pixel is decoded, so a decompression bomb costs a
header read. A corrupt or hostile image is a result (`decodable=False`, `decode_error=...`), never an exception.

A reader that needs a smaller image than the one stored says so (`min_size`: the short side it needs at least). A
JPEG, most of every pool, is decoded by libjpeg-turbo (`simplejpeg`) and, given `min_size`, at the largest of the
DCT-domain reductions 1/2, 1/4, 1/8 that keeps its short side >= min_size: fewer pixels are decoded and the reader's
resize starts from a smaller image, never from one smaller than it asked for. At full scale its pixels equal PIL's
(the same libjpeg-turbo, the same IDCT and upsampling; a test holds it). A JPEG it cannot convert (CMYK) or finds
damaged, and every other format, takes PIL's path, so errors and their texts are the same either way. Neither path
applies EXIF orientation: pixels come in stored order. The size in `ImageInfo` is always the stored size.

`image_format` names an image's format from its first bytes: the download stage asks it before OpenCV (which reads
formats PIL does not, such as Radiance HDR, and has no pixel cap of ours) sees a byte.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

try:
    import simplejpeg
except ImportError:  # the fast path is optional: PIL decodes every JPEG too, at full scale
    simplejpeg = None

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
JPEG_REDUCTIONS = (8, 4, 2)  # libjpeg-turbo's power-of-two DCT-domain scalings 1/8, 1/4, 1/2 (largest first)
REDUCED_FROM = "winnow_reduced_from"  # img.info key: (stored width, stored height, s) of a JPEG decoded at 1/s
_FAST_JPEG_COLOURS = ("YCbCr", "Gray", "RGB")  # converted to RGB by libjpeg-turbo itself; CMYK/YCCK go to PIL


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


def jpeg_reduction(width: int, height: int, min_size: int | None) -> int:
    """s of the largest reduction 1/s (8, 4, 2) that keeps the short side (rounded up, as libjpeg does) >= min_size;
    1 (full scale) without `min_size` or when no reduction keeps it."""
    if not min_size:
        return 1
    short = min(width, height)
    return next((s for s in JPEG_REDUCTIONS if -(-short // s) >= min_size), 1)


def _decode_jpeg(data: bytes, max_pixels: int, min_size: int | None) -> tuple[ImageInfo, Image.Image] | None:
    """A JPEG through libjpeg-turbo, reduced for `min_size`; None leaves it to PIL's path (no simplejpeg, a colour
    space it does not convert, a size over the cap or zero: PIL's path words the error, or anything libjpeg-turbo
    warns about: PIL's path decodes or refuses it as it always did)."""
    if simplejpeg is None:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
        bomb = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels  # PIL's own refusal, kept
        if colour not in _FAST_JPEG_COLOURS or not 0 < width * height <= min(max_pixels, bomb):
            return None
        s = jpeg_reduction(width, height, min_size)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // s), min_width=-(-width // s))
    except ValueError:  # simplejpeg's strict mode: any libjpeg error or warning
        return None
    img = Image.fromarray(pixels)
    if s > 1:
        img.info[REDUCED_FROM] = (width, height, s)
    return ImageInfo(width, height, len(data), True, None), img


def stored_extent(img: Image.Image) -> tuple[int, int, tuple[float, float, float, float]]:
    """(stored width, stored height, the stored image's extent in `img`'s pixels as a resize box). A JPEG decoded at
    1/s has ceil(width / s) columns, the last one covering only part of a block: resizing from the box
    (0, 0, width / s, height / s) keeps the geometry of a resize from the full decode."""
    width, height, s = img.info.get(REDUCED_FROM, (img.width, img.height, 1))
    if (-(-width // s), -(-height // s)) != img.size:  # PIL copies `info` into resized or cropped copies: not ours
        width, height, s = img.width, img.height, 1
    return width, height, (0.0, 0.0, width / s, height / s)


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_size: int | None = None) -> tuple[ImageInfo, Image.Image | None]:
    """Decode to RGB; return the image's info (its stored size) and the image (None when it does not decode).

    `min_size`: the short side the caller needs at least; a JPEG may then come back reduced to 1/2, 1/4 or 1/8 of
    its stored size (see the module's docstring). None: full size."""
    if data is None:
        return ImageInfo(None, None, 0, False, "missing: no image member in the sample"), None
    fmt, refused = image_format(data)
    if refused:
        return ImageInfo(None, None, len(data), False, f"RefusedFormat: {refused} is not one of "
                                                        f"{', '.join(ACCEPTED_FORMATS)}"), None
    if fmt == "JPEG" and (fast := _decode_jpeg(data, max_pixels, min_size)) is not None:
        return fast
    return decode_with_pil(data, max_pixels)


def decode_with_pil(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, Image.Image | None]:
    """PIL's path, full size: every format but the JPEGs libjpeg-turbo decodes (and the reference they equal)."""
    width = height = None
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


def open_rgb(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None) -> Image.Image:
    """The decoded RGB image (reduced for `min_size`, see `decode_image`), or UndecodableImage with the reason (for
    loaders that skip and count)."""
    info, img = decode_image(data, max_pixels, min_size)
    if img is None:
        raise UndecodableImage(info.decode_error)
    return img
