"""The one decoder's fast JPEG path: at full scale the same pixels as PIL's path, reduced for a needed size within a
stated tolerance after the reader's resize, the same errors, and no EXIF rotation on either path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from filtering.preprocess import DEFAULT_PREPROCESS, Preprocessor
from pipeline.core.images import _decode_jpeg, decode_image, decode_with_pil, jpeg_reduction, stored_extent


def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth colour fields, hard-edged shapes and sensor-like noise: what makes resampling differ."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32).copy()
    for _ in range(3):  # hard-edged rectangles
        x0, y0 = rng.integers(0, max(1, w - 2)), rng.integers(0, max(1, h - 2))
        arr[y0:y0 + max(1, h // 4), x0:x0 + max(1, w // 5)] = rng.random(3) * 255
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def encode(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return encode(img, quality=90, exif=exif.tobytes())


FULL_CASES = {
    **{f"{w}x{h}-q{q}-sub{sub}": (lambda w=w, h=h, q=q, sub=sub: encode(scene(w * h, (w, h)), quality=q,
                                                                          subsampling=sub))
       for (w, h) in ((1, 1), (7, 5), (33, 17), (256, 192), (517, 301)) for q, sub in ((90, 0), (75, 1), (95, 2))},
    "grey": lambda: encode(scene(1, (120, 80)).convert("L"), quality=90),
    "progressive": lambda: encode(scene(2, (200, 150)), quality=85, progressive=True),
    "progressive-444": lambda: encode(scene(3, (99, 130)), quality=85, progressive=True, subsampling=0),
    "exif-rotated": lambda: exif_rotated(scene(4, (160, 90))),
    "cmyk": lambda: encode(scene(5, (64, 48)).convert("CMYK"), quality=90),
}


@pytest.mark.parametrize("case", sorted(FULL_CASES))
def test_full_scale_fast_path_decodes_the_same_pixels_as_pil(case):
    data = FULL_CASES[case]()
    info, img = decode_image(data)
    ref_info, ref = decode_with_pil(data)
    assert info == ref_info
    assert img.mode == ref.mode == "RGB" and img.size == ref.size
    assert np.array_equal(np.asarray(img), np.asarray(ref))
    # libjpeg-turbo decoded it, except a CMYK JPEG (it does not convert CMYK to RGB): PIL's path, as before
    assert (_decode_jpeg(data, 10**9, None) is None) == (case == "cmyk")


def test_exif_orientation_is_not_applied_on_either_path():
    data = exif_rotated(scene(4, (160, 90)))
    for min_size in (None, 40):
        info, img = decode_image(data, min_size=min_size)
        assert (info.width, info.height) == (160, 90)
        assert img.width > img.height  # stored order, as PIL's path returns it (no exif_transpose)


@pytest.mark.parametrize("stored, min_size, want", [
    ((512, 448), 224, 2), ((512, 384), 224, 1), ((512, 384), 64, 4), ((1024, 700), 64, 8), ((256, 256), 64, 4),
    ((256, 256), 65, 2), ((300, 200), 224, 1), ((517, 301), 64, 4), ((100, 100), None, 1), ((9, 9), 2, 8),
])
def test_reduction_keeps_the_short_side_at_least_min_size(stored, min_size, want):
    assert jpeg_reduction(*stored, min_size) == want
    info, img = decode_image(encode(scene(0, stored), quality=90), min_size=min_size)
    assert (info.width, info.height) == stored  # the info is the stored size, whatever was decoded
    assert img.size == (-(-stored[0] // want), -(-stored[1] // want))
    assert min(img.size) >= min(min_size or 0, *stored)  # never smaller than asked (or than stored)
    assert stored_extent(img)[:2] == stored


# Tolerance of the reduced path after the reader's resize (open_clip's resize-shortest + center crop, bicubic),
# measured against the full decode + the same resize: every image's PSNR >= 30 dB and mean |diff| <= 3 levels.
# Typical images: ~45 dB at 224 px from 512-1024 px, ~40 dB at 32-64 px (the DCT's block average stands in for
# part of the bicubic filter's antialiasing; the geometry is the full image's, so no pixel shift).
@pytest.mark.parametrize("crop", [224, 64, 32])
def test_reduced_decode_after_resize_matches_the_full_decode_within_tolerance(crop):
    pre = Preprocessor({**DEFAULT_PREPROCESS, "size": [crop, crop]})
    assert pre.min_size == crop
    rng = np.random.default_rng(crop)
    psnrs = []
    for i in range(8):
        w = int(rng.choice([256, 512, 777, 1024]))
        stored = (w, int(w * rng.uniform(0.6, 1.5)))
        img = scene(100 + i, stored)
        data = exif_rotated(img) if i == 0 else encode(img, quality=int(rng.integers(70, 96)),
                                                         subsampling=int(rng.integers(0, 3)),
                                                         progressive=bool(i % 5 == 1))
        reduced = decode_image(data, min_size=pre.min_size)[1]
        a = pre(decode_image(data)[1]).astype(np.float64)
        b = pre(reduced).astype(np.float64)
        mse = ((a - b) ** 2).mean()
        psnrs.append(10 * np.log10(255 ** 2 / max(mse, 1e-12)))
        assert np.abs(a - b).mean() <= 3.0, (stored, reduced.size)
    assert min(psnrs) >= 30.0, psnrs
    assert sum(p > 1e6 for p in psnrs) < len(psnrs)  # some image really was decoded reduced


def test_damaged_and_oversized_jpegs_give_pil_paths_result():
    data = encode(scene(9, (300, 200)), quality=90)
    truncated = data[: len(data) // 2]
    corrupt = data[:600] + bytes(200) + data[800:]  # zeros in the entropy-coded data
    for bad in (truncated, corrupt):
        for min_size in (None, 32):
            info, img = decode_image(bad, min_size=min_size)
            ref_info, ref = decode_with_pil(bad)
            assert info == ref_info
            assert (img is None) == (ref is None)
            if ref is not None:
                assert np.array_equal(np.asarray(img), np.asarray(ref))
    info, img = decode_image(data, max_pixels=10_000, min_size=16)
    assert img is None and info.decode_error == "TooManyPixels: 300x200 > 10000 pixels"
