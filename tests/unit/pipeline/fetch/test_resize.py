"""The download stage's reduced-decode resizer: img2dataset's output (sizes, original sizes, pixels within a stated
tolerance) from a JPEG decoded at 1/2, 1/4 or 1/8 scale; everything it does not handle takes img2dataset's path."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from img2dataset.resizer import Resizer
from PIL import Image

from pipeline.fetch.resize import ReducedDecodeMixin


class Reduced(ReducedDecodeMixin, Resizer):
    max_pixels = 40_000_000


def photo(size: tuple[int, int], seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((7, 9, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32).copy()
    arr[size[1] // 3: size[1] // 2, size[0] // 4: size[0] // 2] = rng.random(3) * 255  # a hard edge
    arr += rng.normal(0, 5, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def both(data: bytes, **kw):
    settings = {"image_size": 64, "resize_mode": "center_crop", "resize_only_if_bigger": False, **kw}
    return Reduced(**settings)(io.BytesIO(data)), Resizer(**settings)(io.BytesIO(data))


@pytest.mark.parametrize("size", [(512, 384), (1024, 700), (777, 1203), (300, 130)])
def test_center_crop_from_a_reduced_decode_matches_img2dataset(size):
    ours, theirs = both(photo(size, seed=size[0]))
    assert ours[1:] == theirs[1:]  # width, height, original width, original height, no error
    a = cv2.imdecode(np.frombuffer(ours[0], np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64)
    b = cv2.imdecode(np.frombuffer(theirs[0], np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64)
    psnr = 10 * np.log10(255 ** 2 / max(((a - b) ** 2).mean(), 1e-12))
    assert psnr >= 30.0 and np.abs(a - b).mean() <= 4.0, (size, psnr, np.abs(a - b).mean())


def test_what_it_does_not_handle_is_img2dataset_s_own_output():
    cases = [(photo((512, 384), 1), {"resize_mode": "keep_ratio"}),  # another mode
             (photo((512, 384), 2, "L"), {}),  # grey: OpenCV keeps one channel
             (photo((100, 90), 3), {}),  # no reduction keeps 64 px
             (photo((512, 384), 4), {"min_image_size": 400}),  # refused: img2dataset words it
             (b"\xff\xd8\xff" + bytes(50), {})]  # damaged
    for data, kw in cases:
        ours, theirs = both(data, **kw)
        assert ours == theirs, kw
