"""8-bit pixels for likelihood training and evaluation: images as uint8 (3, R, R) tensors, never floats, so
dequantisation and the preprocessing's log-determinant are applied in one place (`training.generative.likelihood`).

Every generator family sees the same 8-bit images: the short side resized to R (bicubic) and centre-cropped, as the
diffusion task's `PixelTransform` does before scaling to [-1, 1] (`codec.square_crop`, one definition), so held-out
bits/dim of a flow and of a denoiser score the same data.

Training reads the shared shard stream (`training.contrastive.data.ShardStream`: per-rank shard slices, a shuffle
buffer, skipped samples counted); the held-out set and the actnorm initialisation batch are the first images of
their shards in file order, the same on every rank and every run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pipeline.core.images import open_rgb
from pipeline.core.sample import image_member, primary_caption
from training.data import ErrorCounter, ShardStream, make_loader, tar_samples
from training.generative.diffusion.codec import square_crop


class ToPixels:
    """PIL image -> uint8 (3, R, R): `square_crop` (short side to R, bicubic; centre crop). A class, so spawned
    loader workers can pickle it."""

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.min_size = resolution  # what the loader asks the decoder for

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = square_crop(img, self.resolution)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def pixel_batches(urls: list[str], resolution: int, encode: Callable[[str], torch.Tensor], batch_size: int, *,
                  rank: int, world: int, seed: int, workers: int, shuffle_buffer: int) -> Iterator[dict]:
    """Endless `{"pixels": uint8 (B, 3, R, R), "cond": ids (B, ...), "skipped": (B,)}` for this rank."""
    stream = ShardStream(urls, ToPixels(resolution), encode, rank=rank, world=world, seed=seed,
                         shuffle_buffer=shuffle_buffer)
    loader = make_loader(stream, batch_size, workers)
    for pixels, cond, skipped in loader:
        yield {"pixels": pixels, "cond": cond, "skipped": skipped}


def sample_name(url: str, sample: dict) -> str:
    """How a likelihood error names a sample: its uid (from its JSON, when it has one), shard and key."""
    uid = None
    try:
        uid = json.loads(sample["json"]).get("uid") if "json" in sample else None
    except (ValueError, AttributeError):
        pass
    where = f"{url.rsplit('/', 1)[-1]}/{sample['__key__']}"
    return f"uid {uid} ({where})" if uid else where


def first_samples(urls: list[str], n: int, resolution: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """The first `n` decodable images of `urls` in file order: (uint8 pixels (N, 3, R, R), primary captions, names
    from `sample_name`). Undecodable images are passed over, like the training stream does."""
    to_pixels = ToPixels(resolution)
    pixels, captions, names = [], [], []
    for url in urls:
        for sample in tar_samples([url], ErrorCounter()):
            try:
                image = to_pixels(open_rgb(image_member(sample)[1]))
            except Exception:  # any undecodable image: PIL raises many kinds
                continue
            pixels.append(image)
            captions.append(primary_caption(sample) or "")
            names.append(sample_name(url, sample))
            if len(pixels) == n:
                return torch.stack(pixels), captions, names
    if not pixels:
        raise ValueError(f"no decodable image in {urls[:3]}")
    return torch.stack(pixels), captions, names


def first_images(urls: list[str], n: int, resolution: int,
                 encode: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`first_samples` with each caption through `encode`: (pixels, conditioning ids (N, ...), names)."""
    pixels, captions, names = first_samples(urls, n, resolution)
    return pixels, torch.stack([encode(c) for c in captions]), names
