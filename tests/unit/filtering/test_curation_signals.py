"""Per-sample signals: image size and decode errors, caption signals, exact and perceptual hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from curation_testdata import jpeg, png, smooth_image

from filtering.images import phash_hex, phash_to_uint64
from filtering.signals import sample_row, signal_batches, to_table
from filtering.text import caption_signals, generic_reason
from pipeline.core.images import decode_image


@pytest.mark.parametrize("caption, reason", [
    ("IMG_2041.jpg", "file_name"), ("photos/DSC00012.JPG", "file_name"), ("DSC_0042", "file_name"),
    ("PXL_20230101_123456", "file_name"), ("image", "boilerplate"), ("Click to enlarge!", "boilerplate"),
    ("No description available.", "boilerplate"), ("stock photo", "boilerplate"), ("sunset", "single_word"),
    ("", "empty"), ("   ", "empty"), ("!!! ---", "no_words"), ("Untitled-1", "file_name"),
    ("click here to download", "boilerplate"), ("View full size", "boilerplate"), ("Free Download", "boilerplate"),
    ("a dog running on the beach", None), ("IMG of my cat sleeping", None), ("red car.jpg on a street", None),
])
def test_generic_caption_reasons(caption, reason):
    assert generic_reason(caption) == reason


def test_caption_counts():
    assert caption_signals("  A dog's toy, on the floor.  ") == {
        "caption_chars": 26, "caption_words": 6, "generic_caption": False, "generic_reason": None}


def test_decode_reports_size_and_errors_instead_of_raising():
    data = jpeg(smooth_image(0, (90, 30)))
    info, img = decode_image(data)
    assert (info.width, info.height, info.decodable, info.aspect_ratio) == (90, 30, True, 3.0)
    assert info.image_bytes == len(data) and img.mode == "RGB"
    info, img = decode_image(data[: len(data) // 2])  # truncated JPEG: the header still says 90x30
    assert (info.width, info.height, info.decodable, img) == (90, 30, False, None)
    assert info.decode_error.startswith("OSError")
    info, _ = decode_image(b"<html>not an image</html>")
    assert not info.decodable and info.width is None and "UnidentifiedImageError" in info.decode_error
    info, _ = decode_image(png(smooth_image(1, (200, 100))), max_pixels=10_000)
    assert not info.decodable and info.decode_error.startswith("TooManyPixels: 200x100")
    info, _ = decode_image(None)
    assert not info.decodable and info.decode_error.startswith("missing")


def test_perceptual_hash_is_near_for_copies_and_far_for_other_images():
    img = smooth_image(7, (96, 72))
    copies = [decode_image(jpeg(img, q))[1] for q in (95, 60)] + [img.resize((80, 60))]
    others = [smooth_image(s, (96, 72)) for s in range(20, 30)]
    h = phash_to_uint64([phash_hex(i) for i in [img, *copies, *others]])
    dist = np.bitwise_count(h ^ h[0])
    assert dist[1:4].max() <= 4, dist[1:4]
    assert dist[4:].min() > 10, dist[4:]


def test_sample_row_reads_uid_caption_and_hashes():
    data = jpeg(smooth_image(3))
    meta = {"uid": "ab" * 16, "url": "http://x/3.jpg", "caption": "from json"}
    row, px = sample_row("k3", {"jpg": data, "txt": b"a cat on a mat", "json": json.dumps(meta).encode()}, "00007")
    assert (row["uid"], row["url"], row["caption"], row["shard"], row["key"]) == (
        "ab" * 16, "http://x/3.jpg", "a cat on a mat", "00007", "k3")
    assert row["sha256"] and len(row["phash"]) == 16 and px is None
    row, _ = sample_row("k4", {"txt": b"only text", "json": b"{broken"}, "00007")
    assert not row["decodable"] and row["decode_error"].startswith("missing") and row["sha256"] is None
    assert len(row["uid"]) == 32  # derived from shard/key when the sample has no metadata


def test_batches_keep_types_stable_and_nulls_round_trip():
    samples = [("a", {"jpg": jpeg(smooth_image(1)), "txt": b"one two"}), ("b", {"jpg": b"xx", "txt": b"x"})]
    batches = list(signal_batches(samples, "00000", chunk_rows=1))
    assert len(batches) == 2 and batches[1]["width"].dtype == np.int32 and batches[1]["url"].dtype == object
    t = to_table({k: np.concatenate([b[k] for b in batches]) for k in batches[0]} | {
        "dfn_score": np.array([0.25, np.nan], np.float32)}, with_model=True)
    rows = t.to_pylist()
    assert rows[0]["width"] == 64 and rows[1]["width"] is None and rows[1]["phash"] is None
    assert rows[0]["url"] is None and rows[0]["dfn_score"] == 0.25 and rows[1]["dfn_score"] is None
