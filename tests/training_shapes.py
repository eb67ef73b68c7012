"""Tiny synthetic image-text shards for the trainer's tests and benchmark: coloured shapes with captions.

Twelve classes (4 colours x 3 shapes), so zero-shot chance is 1/12. A training shard holds `<key>.jpg`,
`<key>.txt` and `<key>.json` like the download stage writes; a test set adds `<key>.cls` and a
`classnames.json` like the synthetic source's held-out set. Images are drawn at random positions and sizes on
a noisy background, so the task is easy but not trivial.

    python tests/training_shapes.py /tmp/shapes   # writes /tmp/shapes/pool and /tmp/shapes/test
"""

from __future__ import annotations

import io
import json
import os
import random
import sys

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (235, 215, 30)}
SHAPES = ("circle", "square", "triangle")
CLASSNAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
TEMPLATES = ["a photo of a {}.", "a {}.", "a picture of a {}."]
CAPTIONS = ["a {}", "a photo of a {}", "a {} on a grey background", "a small {}", "a picture of a {}", "{}"]


def draw(label: int, rng: random.Random, side: int = 40) -> Image.Image:
    colour, shape = CLASSNAMES[label].split(" ")
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(90, 160, (side, side, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    d = ImageDraw.Draw(img)
    r = rng.randint(side // 5, side // 3)
    cx, cy = rng.randint(r, side - r), rng.randint(r, side - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shard(path: str, start: int, n: int, seed: int, *, labels: bool = False, multi_caption: bool = False,
                corrupt_every: int = 0) -> None:
    """Write `n` samples to the tar at `path`; every `corrupt_every`-th image is garbage bytes (0 = none)."""
    rng = random.Random(seed * 1_000_003 + start)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(path) as sink:
        for i in range(start, start + n):
            label = rng.randrange(len(CLASSNAMES))
            name = CLASSNAMES[label]
            caption = rng.choice(CAPTIONS).format(name)
            meta = {"uid": f"{i:032x}", "url": f"http://shapes.invalid/{i}.jpg", "caption": caption,
                    "width": 40, "height": 40}
            if multi_caption:
                meta["captions"] = [caption, f"an image of a {name}", f"one {name}"]
            image = jpeg(draw(label, rng))
            if corrupt_every and (i - start) % corrupt_every == corrupt_every - 1:
                image = b"not a jpeg at all"
            sample = {"__key__": f"{i:09d}", "jpg": image, "txt": caption, "json": json.dumps(meta)}
            if labels:
                sample["cls"] = str(label)
            sink.write(sample)


def make_pool(root: str, name: str = "pool", shards: int = 4, per_shard: int = 256, seed: int = 0, **kw) -> list[str]:
    """A winnow dataset `<root>/<name>` with complete (marked) shards; returns the tar paths."""
    from pipeline.core.layout import Dataset

    ds = Dataset(root, name)
    paths = []
    for s in range(shards):
        shard = f"{s:05d}"
        path = ds.shard_file(shard, "tar")
        write_shard(path, s * per_shard, per_shard, seed, **kw)
        ds.write_marker(shard, {"samples": per_shard, "ok": per_shard})
        paths.append(path)
    return paths


def make_testset(folder: str, n: int = 240, seed: int = 1) -> tuple[str, str]:
    """A labelled held-out set like the synthetic source's: returns (shard pattern, classnames.json path)."""
    write_shard(os.path.join(folder, "00000.tar"), 10_000_000, n, seed, labels=True)
    names = os.path.join(folder, "classnames.json")
    with open(names, "w") as f:
        json.dump({"classnames": CLASSNAMES, "templates": TEMPLATES}, f)
    return os.path.join(folder, "00000.tar"), names


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict:
    """Four training shards (1024 samples) in a winnow dataset, and a 240-image labelled held-out set."""
    root = str(tmp_path_factory.mktemp("shapes"))
    pool = make_pool(root, "pool", shards=4, per_shard=256)
    test, classnames = make_testset(os.path.join(root, "test"))
    return {"root": root, "pool": pool, "test": test, "classnames": classnames}


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shapes"
    print(make_pool(out), make_testset(os.path.join(out, "test")))
