"""The contrastive task's part of the loader: captions to open_clip tokens, and open_clip's training transform in
one resize. The loader itself (shard expansion, the capped reader, the shuffled stream) is shared by every task and
lives in `training.data`; its names are imported here for the modules and tests that read them from this one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from training.data import (  # noqa: F401  (re-exported for the contrastive modules' importers)
    ErrorCounter,
    NoShardsError,
    ShardStream,
    expand_shards,
    make_loader,
    pick_caption,
    tar_samples,
)


class TokenEncoder:
    """Caption -> (T,) token ids with open_clip's tokenizer (a class, so spawned loader workers can pickle it)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, caption: str) -> torch.Tensor:
        return self.tokenizer([caption])[0]


ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback


def crop_box(width: int, height: int, scale, ratio, u: list[float]) -> tuple[int, int, int, int]:  # noqa: ANN001
    """torchvision's `RandomResizedCrop.get_params` - (top, left, height, width) of a box of area fraction uniform in
    `scale` and log aspect ratio uniform in log `ratio`, 10 tries, else the centre crop with the ratio clamped - on
    given uniforms in [0, 1): `u[2k], u[2k + 1]` for try k's area and ratio, `u[20], u[21]` for the accepted box's
    position (floor(u * n) is uniform on 0..n-1, as torch.randint)."""
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(lo + (hi - lo) * u[2 * k + 1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ResizedCropTransform:
    """open_clip's training transform - RandomResizedCrop (bicubic), to RGB, ToTensor, Normalize - in one PIL resize
    from the crop box and one tensor expression, at about half its per-image cost. The crop box follows torchvision's
    `get_params` rule (`crop_box`: the same distribution) on one `torch.rand` draw, where torchvision makes some
    twenty tiny torch calls (~0.1 ms an image); torch's generator, so a seed (`torch.manual_seed`, or the DataLoader's
    per-worker seed) gives the same boxes. The pixels differ from crop-then-resize only at the crop's border, where
    the filter here also sees the pixels just outside it. `fast_train_transform` builds it from open_clip's
    `Compose`, or keeps the `Compose` when it holds anything else."""

    def __init__(self, crop, mean, std):
        self.crop = crop  # the torchvision RandomResizedCrop
        self.size = (int(crop.size[1]), int(crop.size[0]))  # (W, H) for PIL
        self.scale = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        from torchvision import transforms as T

        from training.data import needed_size

        self.min_size = needed_size(T.Compose([crop]))  # the loader decodes JPEGs reduced to this

    def box(self, img: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of `img`."""
        u = torch.rand(2 * ATTEMPTS + 2, dtype=torch.float64).tolist()
        return crop_box(img.width, img.height, self.crop.scale, self.crop.ratio, u)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        i, j, h, w = self.box(img)
        out = img.convert("RGB").resize(self.size, Image.BICUBIC, box=(j, i, j + w, i + h))
        x = torch.from_numpy(np.array(out, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W) in 0..255
        return x.sub_(self.shift).div_(self.scale)


def fast_train_transform(transform):
    """`ResizedCropTransform` for open_clip's usual training transform; any other transform as it is."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    names = [type(t).__name__ for t in steps]
    if len(steps) == 4 and isinstance(steps[0], T.RandomResizedCrop) and isinstance(steps[3], T.Normalize) \
            and names[1] in ("MaybeConvertMode", "function") and names[2] in ("MaybeToTensor", "ToTensor") \
            and steps[0].interpolation == T.InterpolationMode.BICUBIC:
        return ResizedCropTransform(steps[0], steps[3].mean, steps[3].std)
    return transform
