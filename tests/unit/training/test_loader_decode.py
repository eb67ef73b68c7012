"""The shard loader's decode size and its optional caption: a model trained through the reduced-scale decode learns
what one trained through the full decode learns, and a task that ignores text keeps caption-less samples."""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF
from training_shapes import CLASSNAMES, draw

from filtering.preprocess import DEFAULT_PREPROCESS, Preprocessor
from pipeline.core.images import decode_with_pil
from pipeline.core.shards import write_tar
from training.data import ShardStream, make_loader, needed_size

SIDE, INPUT = 128, 32  # 128 px shards for a 32 px model: the decoder reduces each JPEG to 1/4


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def shapes_samples(n: int, seed: int, caption_every: int = 1) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = rng.randrange(len(CLASSNAMES))
        files = {"jpg": jpeg(draw(label, rng, side=SIDE)), "cls": str(label).encode()}
        if i % caption_every == 0:
            files["txt"] = f"a {CLASSNAMES[label]}".encode()
        out.append((f"{seed:02d}{i:06d}", files))
    return out


class Pixels:
    """uint8 crop (Preprocessor: short side to 32, centre crop) -> float (3, 32, 32); asks for a 32 px decode."""

    def __init__(self):
        self.pre = Preprocessor({**DEFAULT_PREPROCESS, "size": [INPUT, INPUT]})
        self.min_size = self.pre.min_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.pre(img).copy()).permute(2, 0, 1).float() / 255 - 0.5


def label_of(caption: str) -> torch.Tensor:
    return torch.tensor(CLASSNAMES.index(caption[2:]))


def train_and_test(shard: str, test: list[tuple[str, dict]], decode_size, seed: int) -> float:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a tiny net: more threads only wait on each other on a shared machine
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 16, 16)
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 8, 8)
                        nn.Flatten(), nn.Linear(32 * 64, len(CLASSNAMES)))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    stream = ShardStream([shard], Pixels(), label_of, seed=seed, shuffle_buffer=128, decode_size=decode_size)
    for x, y, _ in itertools.islice(make_loader(stream, 32, workers=0), 40):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pix = Pixels()  # held-out images through today's decoder for both models: only training differs
    x = torch.stack([pix(decode_with_pil(f["jpg"])[1]) for _, f in test])
    y = torch.tensor([int(f["cls"]) for _, f in test])
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def test_a_model_trained_through_the_reduced_decode_matches_the_full_decode(tmp_path):
    shard = str(tmp_path / "00000.tar")
    write_tar(shard, shapes_samples(256, seed=0))
    test = shapes_samples(144, seed=1)
    stream = ShardStream([shard], Pixels(), label_of)
    assert stream.decode_size == INPUT  # "auto" asks the transform: 128 px JPEGs decode at 1/4
    img, _, _ = next(iter(stream))
    assert img.shape == (3, INPUT, INPUT)
    full = [train_and_test(shard, test, None, seed) for seed in (0, 1)]
    reduced = [train_and_test(shard, test, "auto", seed) for seed in (0, 1)]
    chance = 1 / len(CLASSNAMES)
    assert min(full + reduced) > 3 * chance, (full, reduced)
    spread = abs(full[0] - full[1]) + 0.08  # seed noise of the full-decode runs, plus a floor
    assert abs(np.mean(full) - np.mean(reduced)) <= spread, (full, reduced)


def test_needed_size_reads_open_clips_transforms():
    train = open_clip.image_transform(64, is_train=True)  # RandomResizedCrop(64, scale 0.9-1, ratio 3/4-4/3)
    assert needed_size(train) == 78  # the smallest crop is 0.82 of the short side: 64 / 0.82
    assert needed_size(open_clip.image_transform(64, is_train=False)) == 64  # Resize(64) + CenterCrop
    assert needed_size(lambda img: img) is None


def test_a_task_that_ignores_text_keeps_samples_without_a_caption(tmp_path):
    shard = str(tmp_path / "00000.tar")
    samples = shapes_samples(12, seed=2, caption_every=3)  # 4 of 12 have a caption
    write_tar(shard, samples)

    def first(needs_text: bool) -> list:
        stream = ShardStream([shard], Pixels(), lambda c: c, shuffle_buffer=0, needs_text=needs_text)
        return list(itertools.islice(iter(stream), 12 if not needs_text else 4))

    with_text = first(True)
    assert [t for _, t, _ in with_text] == [f["txt"].decode() for _, f in samples if "txt" in f]
    assert sum(s for _, _, s in with_text) == 8 - 2  # caption-less samples skipped and counted (2 after the last)
    image_only = first(False)
    assert len(image_only) == 12 and sum(s for _, _, s in image_only) == 0
    assert [t for _, t, _ in image_only] == [f["txt"].decode() if "txt" in f else "" for _, f in samples]


def test_the_one_resize_train_transform_is_open_clips_own():
    from training.contrastive.data import ResizedCropTransform, fast_train_transform

    train = open_clip.image_transform(64, is_train=True)
    fast = fast_train_transform(train)
    assert isinstance(fast, ResizedCropTransform) and fast.min_size == 78
    assert fast_train_transform(open_clip.image_transform(64, is_train=False)) is not None  # eval: kept as it is
    crop, rest = train.transforms[0], train.transforms[1:]
    rng = random.Random(0)
    for i in range(6):
        img = draw(i % len(CLASSNAMES), rng, side=int(rng.choice([96, 200, 256])))
        torch.manual_seed(i)
        top, left, h, w = fast.box(img)  # its own draw of torchvision's box distribution (test_contrastive_data)
        a = TF.resized_crop(img, top, left, h, w, crop.size, crop.interpolation, antialias=crop.antialias)
        for step in rest:
            a = step(a)
        torch.manual_seed(i)
        b = fast(img)  # the same box from the same seed; only the box's border pixels may differ
        assert a.shape == b.shape == (3, 64, 64)
        assert (a - b).abs().mean() < 0.01, float((a - b).abs().mean())  # normalised units (~1/255 is 0.015)
