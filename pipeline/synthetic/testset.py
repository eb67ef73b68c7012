"""The held-out labelled test set, written directly as webdataset shards (never served).

Per sample: `<key>.jpg`, `<key>.txt` (a clean caption), `<key>.cls` (the class index), `<key>.json` (attributes and
classname). Classes are "<colour> <shape>" (the fashion world: its ten product classes, photos of the package's
test split only), balanced: class counts differ by at most one.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np

from pipeline.synthetic.captions import CLASS_TEMPLATES
from pipeline.synthetic.render import encode
from pipeline.synthetic.worlds import World, get_world

SHARD_SIZE = 1000


def classnames(world: str = "shapes") -> list[str]:
    """Class index -> "<colour> <shape>" of a world."""
    return get_world(world).classnames()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata so the same seed gives the same shard bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def labelled_samples(seed: int, size: int, min_side: int, max_side: int, world: World | None = None,
                     split: str = "test") -> list[dict]:
    """`size` balanced samples of a world in random order: key, label, scene, caption and JPEG bytes. `split`
    matters to a world of real photos (fashion): "test" for held-out sets, "train" for a bench's training set."""
    world = world or get_world("shapes")
    names = world.classnames()
    labels = np.random.default_rng([seed, 40]).permutation(np.arange(size) % len(names))
    out, seen = [], [0] * len(names)
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, 41, i])
        scene = world.heldout_scene(seed, label, seen[label], rng, min_side, max_side, split)
        seen[label] += 1
        quality = int(rng.integers(80, 96))
        out.append({"key": f"{i:06d}", "label": label, "scene": scene,
                    "caption": world.describe(scene, rng, world.pool_templates),
                    "jpg": encode(world.draw(scene), "jpg", quality)})
    return out


def write_test_set(samples: list[dict], out_dir: str, names: list[str] | None = None,
                   templates: tuple[str, ...] = CLASS_TEMPLATES) -> list[str]:
    """Shards of `SHARD_SIZE` samples (`00000.tar`, ...) plus `classnames.json`; returns the shard file names."""
    os.makedirs(out_dir, exist_ok=True)
    shards = []
    for start in range(0, max(len(samples), 1), SHARD_SIZE):
        name = f"{start // SHARD_SIZE:05d}.tar"
        tmp = os.path.join(out_dir, f".{name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples[start:start + SHARD_SIZE]:
                meta = {**s["scene"].attributes(), "label": s["label"], "caption": s["caption"],
                        "width": s["scene"].width, "height": s["scene"].height}
                if hasattr(s["scene"], "origin"):  # which photo of the package (the fashion world)
                    meta["source"] = s["scene"].origin
                _add(tar, f"{s['key']}.jpg", s["jpg"])
                _add(tar, f"{s['key']}.txt", s["caption"].encode())
                _add(tar, f"{s['key']}.cls", str(s["label"]).encode())
                _add(tar, f"{s['key']}.json", json.dumps(meta, sort_keys=True).encode())
        os.replace(tmp, os.path.join(out_dir, name))
        shards.append(name)
    with open(os.path.join(out_dir, "classnames.json"), "w") as f:
        json.dump({"classnames": names or classnames(), "templates": list(templates)}, f, indent=2)
    return shards
