"""The resolution contract of the signals: each image signal is computed from what `SOURCES` says (header, bytes, the
full decode or the reduced one), checked signal by signal on a JPEG big enough to be decoded reduced."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from filtering.images import phash_hex
from filtering.preprocess import DEFAULT_PREPROCESS, Preprocessor
from filtering.signals import BASE_SCHEMA, REDUCED_SOURCES, SOURCES, sample_row
from pipeline.core.images import decode_image, decode_with_pil

IMAGE_FREE = {"uid", "key", "shard", "url", "caption", "caption_chars", "caption_words", "generic_caption",
              "generic_reason"}  # from the caption and the sample's metadata


def photo(size=(512, 448)) -> bytes:
    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((9, 7, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 5, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def expected(source: str, data: bytes, pre: Preprocessor, signal: str):
    header = Image.open(io.BytesIO(data))  # reads the header only
    full = decode_with_pil(data)[1]
    reduced = decode_image(data, min_size=pre.min_size)[1]
    assert reduced.size != full.size  # the test image really is decoded reduced
    by_source = {
        "header": {"width": header.width, "height": header.height,
                   "aspect_ratio": max(header.size) / min(header.size)},
        "bytes": {"image_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "member name": {"image_ext": "jpg"},
        "decode": {"decodable": True, "decode_error": None},
        "full decode": {"phash": phash_hex(full), "pixels": pre(full)},
        "reduced decode": {"phash": phash_hex(reduced), "pixels": pre(reduced)},
    }
    return by_source[source][signal]


@pytest.mark.parametrize("mode, sources", [("full", SOURCES), ("reduced", REDUCED_SOURCES)])
def test_every_image_signal_comes_from_its_stated_source(mode, sources):
    assert set(sources) - {"pixels"} | IMAGE_FREE == set(BASE_SCHEMA.names)  # every column is accounted for
    data = photo()
    pre = Preprocessor({**DEFAULT_PREPROCESS, "size": [224, 224]})
    files = {"jpg": data, "txt": b"a red square", "json": json.dumps({"url": "http://x.test/1.jpg"}).encode()}
    row, pixels = sample_row("k", files, "00000", preprocess=pre, phash_decode=mode)
    got = {**row, "pixels": pixels}
    for signal, source in sources.items():
        want = expected(source, data, pre, signal)
        if signal == "pixels":
            assert np.array_equal(got[signal], want), f"{signal} is not from the {source}"
        else:
            assert got[signal] == want, f"{signal} is not from the {source}"
    # the two modes really differ where the table says they do
    other = REDUCED_SOURCES if mode == "full" else SOURCES
    assert not np.array_equal(pixels, expected(other["pixels"], data, pre, "pixels"))


def test_without_a_model_every_signal_uses_the_full_decode():
    data = photo((256, 256))
    row, pixels = sample_row("k", {"jpg": data, "txt": b"x"}, "00000", phash_decode="reduced")
    assert pixels is None and row["phash"] == phash_hex(decode_with_pil(data)[1])
