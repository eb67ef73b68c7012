"""Sample uids and DataComp subset files: the rule order, and a subset as DataComp's resharder reads it."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from pipeline.core.ids import (
    SUBSET_DTYPE,
    in_subset,
    load_subset,
    sample_uid,
    subset_array,
    uid_halves,
    uid_of,
)

UIDS = [hashlib.md5(str(i).encode()).hexdigest() for i in range(50)] + ["f" * 32, "0" * 31 + "1"]


def test_the_uid_rule_prefers_the_source_uid_then_the_url_then_the_image_bytes():
    image = b"\xff\xd8\xffsome jpeg"
    assert sample_uid({"uid": "AB" * 16, "url": "http://x/1.jpg"}, image, "0/1") == ("ab" * 16, "source_uid")
    # not a 128-bit hex uid: the next rule decides, as it would for a sample with none
    assert sample_uid({"uid": "12345", "url": "http://x/1.jpg"}, image, "0/1") == (uid_of("http://x/1.jpg"),
                                                                                  "url_md5")
    assert sample_uid({}, image, "0/1") == (hashlib.sha256(image).hexdigest()[:32], "image_sha256")
    assert sample_uid({}, None, "00000/0001") == (uid_of("00000/0001"), "shard_key")


def test_a_subset_is_what_datacomps_resharder_loads_and_looks_up():
    buf = io.BytesIO()
    np.save(buf, subset_array(reversed(UIDS)))
    buf.seek(0)
    # mlfoundations/datacomp resharder.py: np.load(...), `assert subset.dtype == u16` with u16 = np.dtype("u8,u8"),
    # then each sample's JSON uid as divmod(int(uid, 16), 2**64), found by np.searchsorted.
    subset = np.load(buf, mmap_mode=None)
    assert subset.dtype == np.dtype("u8,u8") and subset.ndim == 1 and len(subset) == len(UIDS)
    assert (np.sort(subset) == subset).all()
    for uid in UIDS:
        key = np.array([divmod(int(uid, 16), 2**64)], np.dtype("u8,u8"))[0]
        a, b = np.searchsorted(subset, key, "left"), np.searchsorted(subset, key, "right")
        assert b - a == 1
    missing = np.array([divmod(int("e" * 32, 16), 2**64)], np.dtype("u8,u8"))[0]
    assert np.searchsorted(subset, missing, "right") - np.searchsorted(subset, missing, "left") == 0


def test_halves_membership_and_a_bad_file():
    subset = subset_array(UIDS[:10])
    pairs, valid = uid_halves(UIDS + ["not-a-uid"])
    assert valid.tolist() == [True] * len(UIDS) + [False]
    inside = in_subset(pairs, subset) & valid
    assert inside.tolist() == [True] * 10 + [False] * (len(UIDS) - 10 + 1)
    assert not in_subset(pairs, np.empty(0, SUBSET_DTYPE)).any()
    with pytest.raises(ValueError, match="not 128-bit hex uids"):
        subset_array(["xyz"])
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.uint64))
    buf.seek(0)
    with pytest.raises(ValueError, match=r"sub.npy: expected a 1-D array of dtype"):
        load_subset(buf, "sub.npy")
    with pytest.raises(ValueError, match=r"sub.npy: not a NumPy .npy file"):
        load_subset(io.BytesIO(b"uid\nabc\n"), "sub.npy")
