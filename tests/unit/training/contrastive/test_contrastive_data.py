"""The training loader: shard patterns, reader splits, skipped samples, several captions per image."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from training_shapes import write_shard

from training.contrastive.data import (
    ErrorCounter,
    NoShardsError,
    ShardStream,
    expand_shards,
    make_loader,
    pick_caption,
    tar_samples,
)


def keys_stream(urls, rank=0, world=1, seed=0):
    return ShardStream(urls, preprocess=lambda img: torch.zeros(1), encode_text=lambda caption: caption,
                       rank=rank, world=world, seed=seed, shuffle_buffer=0)


def first_pass(stream: ShardStream) -> list[str]:
    """Keys of the samples this reader reads in its first pass over the data."""
    return [s["__key__"] for s in tar_samples(next(stream.shards()), ErrorCounter())]


def test_patterns_expand_and_an_empty_match_names_the_pattern(shapes, tmp_path):
    pool_dir = os.path.dirname(shapes["pool"][0])
    assert expand_shards(os.path.join(pool_dir, "*.tar")) == shapes["pool"]
    assert expand_shards(os.path.join(pool_dir, "{00001..00002}.tar")) == shapes["pool"][1:3]
    pattern = str(tmp_path / "nothing-*.tar")
    with pytest.raises(NoShardsError, match=r"no shard matches the pattern .*nothing-\*\.tar"):
        expand_shards(pattern)


def test_ranks_read_disjoint_shards_that_cover_the_data(shapes):
    per_rank = [first_pass(keys_stream(shapes["pool"], rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 512  # 4 shards x 256 samples over 2 ranks
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 1024
    # the next pass reshuffles the shard order, still disjoint
    passes = [list(itertools.islice(keys_stream(shapes["pool"], rank=r, world=2).shards(), 3)) for r in range(2)]
    for p in range(3):
        assert not set(passes[0][p]) & set(passes[1][p])
    assert passes[0][0] != passes[0][1] or passes[0][1] != passes[0][2]


def test_more_readers_than_shards_resample(shapes):
    stream = keys_stream(shapes["pool"][:1], rank=3, world=4)
    assert [len(s) for s in itertools.islice(stream.shards(), 5)] == [1] * 5


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    path = str(tmp_path / "00000.tar")
    write_shard(path, 0, 40, seed=0, corrupt_every=4)  # 10 of 40 images are not JPEGs
    stream = ShardStream([path], preprocess=lambda img: torch.zeros(1), encode_text=lambda c: torch.zeros(1),
                         shuffle_buffer=0)
    got = [skipped for _, _, skipped in itertools.islice(iter(stream), 60)]  # two passes of 30 good samples
    # a skip rides on the next good sample: the 40th (corrupt) sample's on the first of the second pass
    assert sum(got[:30]) == 9 and sum(got[:31]) == 10
    assert sum(got) == 19


def test_the_loader_sums_skips_per_batch(tmp_path):
    path = str(tmp_path / "00000.tar")
    write_shard(path, 0, 32, seed=0, corrupt_every=8)
    stream = ShardStream([path], preprocess=lambda img: torch.zeros(3), encode_text=lambda c: torch.zeros(2),
                         shuffle_buffer=8)
    images, texts, skipped = next(iter(make_loader(stream, batch_size=28, workers=0)))
    assert images.shape == (28, 3) and texts.shape == (28, 2)
    assert int(skipped.sum()) == 4


def test_one_of_several_captions_is_drawn_each_read(tmp_path):
    import random

    rng = random.Random(0)
    sample = {"txt": b"fallback", "json": json.dumps({"captions": ["one", "two", "three"]}).encode()}
    assert {pick_caption(sample, rng) for _ in range(60)} == {"one", "two", "three"}
    assert pick_caption({"txt": b"fallback", "json": b'{"captions": []}'}, rng) == "fallback"
    assert pick_caption({"json": b'{"caption": "from json"}'}, rng) == "from json"
    assert pick_caption({"txt": b"  "}, rng) is None

    path = str(tmp_path / "00000.tar")
    write_shard(path, 0, 4, seed=0, multi_caption=True)
    stream = ShardStream([path], preprocess=lambda img: torch.zeros(1), encode_text=lambda c: c, shuffle_buffer=0)
    captions = {text for _, text, _ in itertools.islice(iter(stream), 40)}  # each image read 10 times
    written = {c for s in tar_samples([path], ErrorCounter()) for c in json.loads(s["json"])["captions"]}
    assert captions == written  # every caption of every image gets drawn


def test_shards_that_yield_nothing_fail_instead_of_spinning(tmp_path):
    from training.contrastive.data import ShardStream

    stream = ShardStream([str(tmp_path / "missing-00000.tar"), str(tmp_path / "missing-00001.tar")],
                         preprocess=lambda im: im, encode_text=lambda t: t)
    with pytest.raises(RuntimeError, match="no readable sample in .* passes over shards"):
        next(iter(stream))


def test_hostile_tar_members_are_never_extracted_or_followed(tmp_path, monkeypatch):
    """Absolute and `..` names, links and devices in a shard are refused by the one capped reader and counted as
    skipped, as the score stage counts them; nothing is written to disk and no link is followed."""
    from curation_testdata import add_hostile_members

    from training.contrastive.data import ShardStream

    shard = str(tmp_path / "s.tar")
    write_shard(shard, 0, 6, seed=0)
    add_hostile_members(shard)
    work = tmp_path / "cwd" / "a"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # "../escape.txt" would land in tmp_path/cwd if anything extracted
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    stream = ShardStream([shard], preprocess=lambda im: im.size, encode_text=lambda t: t, shuffle_buffer=0)
    items = list(itertools.islice(iter(stream), 7))  # one pass of 6 real samples, then the next pass begins
    assert all(size == (40, 40) for size, _, _ in items)
    # the shard's 6 refused members (3 unsafe names, 2 links, 1 device) ride on the first sample after it
    assert [skipped for _, _, skipped in items] == [0] * 6 + [6]
    assert all("passwd" not in text and "outside" not in text for _, text, _ in items)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("size", [(256, 256), (96, 200), (300, 60)])
@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0)])
def test_crop_boxes_follow_torchvisions_distribution(size, scale):
    """The one-draw crop box (`crop_box`) against torchvision's get_params: area fraction, log aspect ratio, centre
    and the fallback's share agree over many draws; every box lies inside the image."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from training.contrastive.data import ResizedCropTransform

    crop = T.RandomResizedCrop(64, scale=scale, ratio=(3 / 4, 4 / 3))
    fast = ResizedCropTransform(crop, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = Image.new("RGB", size)
    W, H = size

    def stats(boxes) -> np.ndarray:
        b = np.array(boxes, dtype=np.float64)  # (top, left, h, w)
        assert (b[:, 2] > 0).all() and (b[:, 3] > 0).all() and (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 0] + b[:, 2] <= H).all() and (b[:, 1] + b[:, 3] <= W).all()
        area, log_ratio = b[:, 2] * b[:, 3] / (W * H), np.log(b[:, 3] / b[:, 2])
        centre_y, centre_x = (b[:, 0] + b[:, 2] / 2) / H, (b[:, 1] + b[:, 3] / 2) / W
        fallback = (b[:, 0] == (H - b[:, 2]) // 2) & (b[:, 1] == (W - b[:, 3]) // 2)
        return np.array([area.mean(), area.std(), log_ratio.mean(), log_ratio.std(), centre_y.mean(),
                         centre_x.mean(), centre_y.std(), centre_x.std(), fallback.mean()])

    torch.manual_seed(0)
    want = stats([crop.get_params(img, crop.scale, crop.ratio) for _ in range(2000)])
    torch.manual_seed(1)
    got = stats([fast.box(img) for _ in range(2000)])
    assert np.abs(got - want).max() < 0.03, (got.round(3), want.round(3))
    torch.manual_seed(5)
    again = [fast.box(img) for _ in range(20)]
    torch.manual_seed(5)
    assert [fast.box(img) for _ in range(20)] == again  # a seed gives the same boxes
    if size == (300, 60) and scale == (0.9, 1.0):  # no box fits: always torchvision's centre crop, exactly
        assert {fast.box(img) for _ in range(10)} == {crop.get_params(img, crop.scale, crop.ratio)}
        assert fast.box(img) == (0, 110, 60, 80)
