"""The third world, "fashion": real product photographs (Fashion-MNIST, 28 x 28 grey, ten classes), not our renderer.

The shapes and objects worlds are drawn by one renderer from one scene sampler; this world checks a default on
pictures nobody here drew. It is served like the others: the same planted noise, faults, clean set, test set and
server; only the pictures and the captions differ.

    pool and clean (hq) set   distinct photos of the package's TRAIN split (a seeded permutation, no photo twice)
    held-out test set         photos of the TEST split only, balanced over the classes
    image                     the grey photo upscaled (bilinear) to a square side in [min_side, max_side], RGB
    captions                  colour-free templates naming the class (`FASHION_POOL_TEMPLATES`, ...)

Where the photos come from (`resolve_source`): `synthetic.fashion_data`, else `$WINNOW_FASHION_DIR`, else Debian's
`dataset-fashion-mnist` folder (`make fashion-data` installs it). A folder holds the four IDX files (gzipped or
not); a `.npz` file is an extract with arrays train_images, train_labels, test_images, test_labels (the test
suite's fixture, `tests/data/fashion_small.npz`, written by `python -m pipeline.synthetic.fashion_fixture`).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from pipeline.core.config import ConfigError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV = "WINNOW_FASHION_DIR"
# Fashion-MNIST's label order; "t-shirt" for its "T-shirt/top", "trousers" and "ankle boot" as a shop says them.
CLASSES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
IDX = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}

# Fields: {item} (the class name). No colour words: the photos are grey.
FASHION_POOL_TEMPLATES = (
    "a {item}",
    "{item}",
    "a photo of a {item}",
    "product photo: {item}",
    "the {item}",
    "a {item} for sale",
    "buy this {item} online",
    "new {item}, product shot",
    "catalogue image of a {item}",
    "a {item} on a dark background",
    "black and white photo of a {item}",
    "my new {item}",
    "{item}, front view",
    "a picture of a {item}",
)
FASHION_HQ_TEMPLATES = (
    "a product photo of a {item} on a black background",
    "a greyscale catalogue photo of a {item}, front view",
    "a black and white picture of a single {item}",
    "a centred photo of one {item} on a plain dark background",
)
FASHION_CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "an image of a {}.",
    "a product photo of a {}.",
    "a picture of a {}.",
    "a black and white photo of a {}.",
)


class FashionDataMissing(ConfigError):
    """The photos are not where the config or the environment says (or not installed): a config problem, so the
    command line prints the message and what to do, not a traceback."""


def resolve_source(configured: str | None = None) -> str:
    """Where the photos are read from: the config's path, else $WINNOW_FASHION_DIR, else the Debian package's."""
    return os.path.abspath(configured or os.environ.get(ENV) or DEFAULT_DIR)


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    got, n = struct.unpack(">II", data[:8])
    if got != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind (magic {got}, want {magic})")
    if magic == 2049:  # labels
        return np.frombuffer(data, np.uint8, n, 8).copy()
    rows, cols = struct.unpack(">II", data[8:16])
    return np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, rows, cols).copy()


def _idx_file(folder: str, stem: str) -> str | None:
    for name in (f"{stem}.gz", stem):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


@dataclass(frozen=True)
class FashionData:
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8, indices into CLASSES
    test_images: np.ndarray
    test_labels: np.ndarray

    def images(self, split: str) -> np.ndarray:
        return self.train_images if split == "train" else self.test_images

    def labels(self, split: str) -> np.ndarray:
        return self.train_labels if split == "train" else self.test_labels


@functools.lru_cache(maxsize=2)
def load(source: str) -> FashionData:
    """The photos at `source` (a folder of IDX files or a .npz extract), read once per process."""
    if source.endswith(".npz"):
        if not os.path.exists(source):
            raise FashionDataMissing(f"the Fashion-MNIST extract {source} does not exist")
        with np.load(source) as z:
            return FashionData(*(np.asarray(z[k]) for k in IDX))
    paths = {k: _idx_file(source, stem) for k, stem in IDX.items()}
    missing = [IDX[k] for k, p in paths.items() if p is None]
    if missing:
        raise FashionDataMissing(
            f"the fashion world's photos are not in {source} (missing {', '.join(missing)}[.gz]). Run `make "
            f"fashion-data` (apt-get install dataset-fashion-mnist, into {DEFAULT_DIR}), or point "
            f"synthetic.fashion_data or ${ENV} at a folder of the Fashion-MNIST IDX files or a .npz extract")
    return FashionData(*(_read_idx(paths[k], 2049 if k.endswith("labels") else 2051) for k in IDX))


@dataclass(frozen=True)
class FashionScene:
    """One served photo: which one (split and index in the source), how big, and a near duplicate's jitter."""

    label: int
    split: str  # "train" (pool, hq) or "test" (the held-out set)
    index: int
    width: int
    height: int
    source: str  # resolve_source(...): draw() reads the pixels from there
    gain: float = 1.0  # brightness factor (near duplicates)
    dx: int = 0  # shift in source pixels (near duplicates)
    dy: int = 0

    @property
    def shape(self) -> str:  # the class, under the attribute name the other worlds' code reads
        return CLASSES[self.label]

    @property
    def classname(self) -> str:
        return CLASSES[self.label]

    @property
    def origin(self) -> str:
        """"train:<index>" or "test:<index>": which photo of the package this is (truth.parquet's `source`)."""
        return f"{self.split}:{self.index}"

    def attributes(self) -> dict:
        return {"shape": self.classname, "colour": None, "size": None, "position": None, "background": None,
                "classname": self.classname}


def _side(rng: np.random.Generator, min_side: int, max_side: int) -> int:
    return int(rng.integers(min_side, max_side + 1))  # square: the photos are, and stretching them is not the test


@functools.lru_cache(maxsize=4)
def permutation(source: str, seed: int) -> np.ndarray:
    """The order in which the pool, then the hq set, take train photos: each photo at most once."""
    return np.random.default_rng([seed, 50]).permutation(len(load(source).train_labels))


@functools.lru_cache(maxsize=64)
def _class_order(source: str, split: str, seed: int, label: int) -> np.ndarray:
    """The order in which a labelled set takes the photos of one class from one split."""
    of_class = np.flatnonzero(load(source).labels(split) == label)
    return np.random.default_rng([seed, 51 if split == "test" else 52, label]).permutation(of_class)


def web_scene(source: str, seed: int, pool_size: int, split: str, i: int, rng: np.random.Generator, min_side: int,
              max_side: int) -> FashionScene:
    """The i-th photo of the pool (split "pool") or of the clean set ("hq"): a distinct train photo each."""
    data = load(source)
    slot = i if split == "pool" else pool_size + i
    perm = permutation(source, seed)
    if slot >= len(perm):
        raise ValueError(f"the fashion world has {len(perm)} train photos in {source}; pool_size + hq_size must not "
                         f"exceed that (the pool and the clean set never share a photo)")
    index = int(perm[slot])
    side = _side(rng, min_side, max_side)
    return FashionScene(int(data.train_labels[index]), "train", index, side, side, source)


def heldout_scene(source: str, seed: int, label: int, occurrence: int, rng: np.random.Generator, min_side: int,
                  max_side: int, split: str = "test") -> FashionScene:
    """The `occurrence`-th labelled photo of class `label` from `split` (the web's test set: the TEST split only),
    distinct photos per class."""
    order = _class_order(source, split, seed, label)
    if occurrence >= len(order):
        raise ValueError(f"the fashion world's {split} split in {source} has {len(order)} photos of "
                         f"{CLASSES[label]!r}; lower test_size")
    index = int(order[occurrence])
    side = _side(rng, min_side, max_side)
    return FashionScene(label, split, index, side, side, source)


def tiny_scene(scene: FashionScene, rng: np.random.Generator, min_side: int, max_side: int) -> FashionScene:
    """The same photo, a few pixels a side."""
    side = _side(rng, min_side, max_side)
    return replace(scene, width=side, height=side)


def jitter_scene(scene: FashionScene, rng: np.random.Generator) -> FashionScene:
    """A near duplicate: the same photo rescaled by up to 10%, a pixel's shift, brightness within 8%."""
    side = max(4, int(round(scene.width * rng.uniform(0.9, 1.1))))
    return replace(scene, width=side, height=side, gain=float(rng.uniform(0.92, 1.08)), dx=int(rng.integers(-1, 2)),
                   dy=int(rng.integers(-1, 2)))


def draw(scene: FashionScene) -> Image.Image:
    """The RGB image of a scene: the grey photo, shifted and brightened as the scene says, upscaled bilinearly."""
    pixels = load(scene.source).images(scene.split)[scene.index]
    if scene.dx or scene.dy:
        pixels = np.roll(pixels, (scene.dy, scene.dx), axis=(0, 1))
    if scene.gain != 1.0:
        pixels = np.clip(pixels.astype(np.float32) * scene.gain, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "L").resize((scene.width, scene.height), Image.BILINEAR)
    return img.convert("RGB")


def describe(scene: FashionScene, rng: np.random.Generator,
             templates: tuple[str, ...] = FASHION_POOL_TEMPLATES) -> str:
    """A clean caption of a photo, from a random template; it names the class exactly."""
    from pipeline.synthetic.captions import article_fix

    return article_fix(templates[int(rng.integers(len(templates)))].format(item=scene.classname))
