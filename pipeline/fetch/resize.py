"""The download stage's resizer: img2dataset's `Resizer` behind winnow's header check, decoding less.

`GuardedResizerMixin` lets OpenCV see only images in an accepted format whose header declares at most `max_pixels`
pixels, times the work (decoding, in the stage's time split) and gives the body's bytes back to the task's budget.
`ReducedDecodeMixin` decodes a JPEG much larger than the output through the one decoder at 1/2, 1/4 or 1/8 scale
(libjpeg-turbo's DCT-domain scaling) instead of OpenCV's full decode, then resizes and crops as img2dataset does;
every other image, mode or setting takes img2dataset's own path. Its output equals img2dataset's within a stated
tolerance (a test: the same sizes; PSNR >= 30 dB and mean |difference| <= 4 levels, on noisy test images).
"""

from __future__ import annotations

import io
import time
import warnings

from pipeline.core.images import ACCEPTED_FORMATS, image_format
from pipeline.core.timing import TimeSplit
from pipeline.fetch.net_guard import ByteBudget


class GuardedResizerMixin:
    """img2dataset's Resizer, letting OpenCV see only images in an accepted format whose header declares at most
    `max_pixels` pixels (OpenCV reads formats PIL does not, e.g. Radiance HDR, and would decode them whole). It gives
    the body's bytes back to the task's budget once the image is processed, and counts its time as decoding."""

    max_pixels: int
    budget: ByteBudget | None = None
    timer: TimeSplit | None = None  # its calls count as decoding; the first one's wall time is `first_at[0]`
    first_at: list | None = None

    def __call__(self, img_stream, blurring_bbox_list=None):  # noqa: ANN001, ANN204
        if self.first_at is not None and not self.first_at:
            self.first_at.append(time.time())
        t0 = time.perf_counter()
        try:
            refused = refuse_image(img_stream.getbuffer(), self.max_pixels)
            if refused:
                return None, None, None, None, None, refused
            img_stream.seek(0)
            return super().__call__(img_stream, blurring_bbox_list)
        finally:
            if self.budget is not None:
                self.budget.release(len(img_stream.getbuffer()))
            if self.timer is not None:
                self.timer.add({"decoding": time.perf_counter() - t0})


def refuse_image(data: bytes | memoryview, max_pixels: int) -> str | None:
    """Why OpenCV must not decode these bytes (img2dataset's error text, classified into a reason), or None."""
    from PIL import Image

    fmt, refused = image_format(data)
    if refused:
        return f"refused format: {refused} is not one of {', '.join(ACCEPTED_FORMATS)}"
    if fmt is None:
        return "Image decoding error: not an image in an accepted format"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap is checked below
            with Image.open(io.BytesIO(data), formats=(fmt,)) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError as err:
        return f"too many pixels: {err}"
    except Exception as err:  # noqa: BLE001 - PIL raises many types on a damaged header
        return f"Image decoding error: {type(err).__name__}: {err}"[:200]
    if w * h > max_pixels:
        return f"too many pixels: {w}x{h} > {max_pixels}"
    return None


# OpenCV's INTER_AREA, INTER_LINEAR, INTER_CUBIC, INTER_LANCZOS4 -> PIL's BOX, BILINEAR, BICUBIC, LANCZOS
_PIL_FILTER = {3: 4, 1: 2, 2: 3, 4: 1}


class ReducedDecodeMixin:
    """img2dataset's Resizer, decoding a JPEG at least twice the output size reduced (see the module's docstring)."""

    max_pixels: int

    def __call__(self, img_stream, blurring_bbox_list=None):  # noqa: ANN001, ANN204
        out = self._reduced(img_stream.getvalue()) if blurring_bbox_list is None else None
        if out is not None:
            return out
        img_stream.seek(0)
        return super().__call__(img_stream, blurring_bbox_list)

    def _reduced(self, data: bytes):  # noqa: ANN202
        """img2dataset's center_crop from a reduced decode, or None for its own path: another mode or format, a
        grey JPEG (OpenCV keeps it one channel), an image a check refuses (img2dataset words the refusal), one no
        reduction fits, or no re-encoding wanted."""
        from PIL import Image

        from pipeline.core.images import decode_image, jpeg_reduction

        mode = getattr(self.resize_mode, "name", self.resize_mode)
        if mode != "center_crop" or self.disable_all_reencoding or image_format(data)[0] != "JPEG":
            return None
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as head:  # the header only
                (w, h), grey = head.size, head.mode == "L"
        except Exception:  # noqa: BLE001 - a damaged header: img2dataset's path reports it
            return None
        short, size = min(w, h), self.image_size
        if grey or jpeg_reduction(w, h, size) == 1 or short < self.min_image_size or w * h > self.max_image_area \
                or max(w, h) / short > self.max_aspect_ratio:
            return None
        info, img = decode_image(data, self.max_pixels, min_size=size)
        if img is None:
            return None
        import cv2
        import numpy as np

        from pipeline.core.images import stored_extent

        scale = size / short  # img2dataset's SmallestMaxSize on the stored size, then its centre crop
        new_w, new_h = round(w * scale), round(h * scale)
        # PIL's filter like OpenCV's (BOX is INTER_AREA's averaging), from the stored image's extent: no pixel shift
        resample = _PIL_FILTER.get(self.downscale_interpolation, Image.BICUBIC)
        small = np.asarray(img.resize((new_w, new_h), resample, box=stored_extent(img)[2]))
        top, left = (new_h - size) // 2, (new_w - size) // 2
        crop = np.ascontiguousarray(small[top:top + size, left:left + size, ::-1])  # RGB -> OpenCV's BGR
        encoded = cv2.imencode(f".{self.encode_format}", crop, params=self.encode_params)[1].tobytes()
        return encoded, size, size, info.width, info.height, None
