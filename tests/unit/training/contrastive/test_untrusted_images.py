"""Images from elsewhere (a shard, an image folder) reach a decoder only in an accepted format and under the pixel
cap, in training and in evaluation: an EPS named `.jpg` is skipped and counted, never handed to Ghostscript."""

from __future__ import annotations

import io
import itertools
import tarfile

import pytest
import torch
from curation_testdata import jpeg, smooth_image
from PIL import EpsImagePlugin

from pipeline.core.images import decode_image
from pipeline.synthetic.faults import bomb_png, hdr_bomb
from training.contrastive.data import ShardStream
from training.contrastive.eval import folder_batches, shard_batches

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n0 0 moveto showpage\n%%EOF\n"


@pytest.fixture(autouse=True)
def no_ghostscript(monkeypatch):
    """Ghostscript, as PIL would call it: any call fails the test (and calls nothing)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("an EPS reached Ghostscript")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    yield calls
    assert calls == []


def _shard(path, images: list[bytes]) -> str:
    with tarfile.open(path, "w") as tf:
        for i, data in enumerate(images):
            for ext, body in (("jpg", data), ("txt", f"caption {i}".encode()), ("cls", b"0")):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return str(path)


def test_refused_formats_are_named_without_decoding():
    for data, name in ((EPS, "PostScript"), (hdr_bomb(64, 64), "Radiance HDR")):
        info, img = decode_image(data)
        assert img is None and not info.decodable and info.decode_error.startswith(f"RefusedFormat: {name}")


def test_the_training_loader_skips_and_counts_refused_images(tmp_path):
    good = jpeg(smooth_image(0, (32, 32)))
    bomb, _, _ = bomb_png(41_000_000)  # over the 40 M pixel cap, 41 kB on the wire
    path = _shard(tmp_path / "00000.tar", [good, EPS, good, bomb, hdr_bomb(64, 64), good])
    stream = ShardStream([path], preprocess=lambda img: torch.zeros(1), encode_text=lambda c: torch.zeros(1),
                         shuffle_buffer=0)
    got = [skipped for _, _, skipped in itertools.islice(iter(stream), 3)]
    assert got == [0, 1, 2]  # the EPS before the second good image; the bomb and the HDR before the third


def test_evaluation_skips_refused_images_in_shards_and_image_folders(tmp_path):
    good = jpeg(smooth_image(1, (32, 32)))
    path = _shard(tmp_path / "test.tar", [good, EPS, good])
    batches = list(shard_batches(path, lambda img: torch.zeros(3), batch_size=8, limit=None))
    assert batches[0][0].shape == (2, 3)
    for cls in ("cat", "dog"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        (tmp_path / "folder" / cls / "good.jpg").write_bytes(good)
        (tmp_path / "folder" / cls / "evil.jpg").write_bytes(EPS)  # named .jpg, an EPS inside
    images, labels, _ = next(folder_batches(str(tmp_path / "folder"), lambda img: torch.zeros(3), 8, None))
    assert images.shape == (2, 3) and sorted(labels.tolist()) == [0, 1]
