"""`sort_tar`: a shard written in any sample order comes out in key order, the same bytes whatever the order in."""

from __future__ import annotations

import hashlib
import random

from pipeline.core.shards import read_samples, sort_tar, write_tar

SAMPLES = [(f"{i:08d}", {"jpg": bytes([i]) * (100 + i), "txt": f"caption {i}".encode(), "json": b"{}"})
           for i in range(30)]


def test_any_order_in_gives_key_order_and_identical_bytes(tmp_path):
    digests = set()
    for trial in range(3):
        shuffled = SAMPLES[:]
        random.Random(trial).shuffle(shuffled)
        src = str(tmp_path / f"in{trial}.tar")
        write_tar(src, shuffled)
        assert sort_tar(src, src) == len(SAMPLES)  # in place, as the download stage does
        assert list(read_samples(src)) == SAMPLES
        with open(src, "rb") as f:
            digests.add(hashlib.sha256(f.read()).hexdigest())
    assert len(digests) == 1


def test_empty_shard(tmp_path):
    src = str(tmp_path / "empty.tar")
    write_tar(src, [])
    assert sort_tar(src, str(tmp_path / "out.tar")) == 0
    assert list(read_samples(str(tmp_path / "out.tar"))) == []
