"""8-bit pixels for likelihood training: images as uint8 (3, R, R) tensors, never floats, so dequantisation and the
preprocessing's log-determinant are applied in one place (`training.generative.likelihood`).

Training reads the shared shard stream (`training.contrastive.data.ShardStream`: per-rank shard slices, a shuffle
buffer, skipped samples counted); the held-out set and the actnorm initialisation batch are the first images of
their shards in file order, the same on every rank and every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pipeline.core.images import open_rgb
from pipeline.core.sample import image_member, primary_caption
from training.data import ErrorCounter, ShardStream, make_loader, tar_samples


class ToPixels:
    """PIL image -> uint8 (3, R, R): centre crop to a square, then box-filter down (each output pixel the mean of
    the input pixels it covers). A class, so spawned loader workers can pickle it."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        img = img.convert("RGB").resize((self.resolution, self.resolution), Image.BOX, box=box)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def pixel_batches(urls: list[str], resolution: int, encode: Callable[[str], torch.Tensor], batch_size: int, *,
                  rank: int, world: int, seed: int, workers: int, shuffle_buffer: int) -> Iterator[dict]:
    """Endless `{"pixels": uint8 (B, 3, R, R), "cond": ids (B, ...), "skipped": (B,)}` for this rank."""
    stream = ShardStream(urls, ToPixels(resolution), encode, rank=rank, world=world, seed=seed,
                         shuffle_buffer=shuffle_buffer)
    loader = make_loader(stream, batch_size, workers)
    for pixels, cond, skipped in loader:
        yield {"pixels": pixels, "cond": cond, "skipped": skipped}


def first_images(urls: list[str], n: int, resolution: int,
                 encode: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first `n` decodable images of `urls` in file order: (uint8 pixels (N, 3, R, R), conditioning ids (N, ...),
    names "<shard>/<key>"). Undecodable images are passed over, like the training stream does."""
    to_pixels = ToPixels(resolution)
    pixels, cond, names = [], [], []
    for url in urls:
        for sample in tar_samples([url], ErrorCounter()):
            try:
                image = to_pixels(open_rgb(image_member(sample)[1]))
            except Exception:  # any undecodable image: PIL raises many kinds
                continue
            pixels.append(image)
            cond.append(encode(primary_caption(sample) or ""))
            names.append(f"{url.rsplit('/', 1)[-1]}/{sample['__key__']}")
            if len(pixels) == n:
                return torch.stack(pixels), torch.stack(cond), names
    if not pixels:
        raise ValueError(f"no decodable image in {urls[:3]}")
    return torch.stack(pixels), torch.stack(cond), names
