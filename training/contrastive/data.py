"""The contrastive task's part of the loader: captions to open_clip tokens, and open_clip's training transform in
one resize. The loader itself (shard expansion, the capped reader, the shuffled stream) is shared by every task and
lives in `training.data`; its names are imported here for the modules and tests that read them from this one.
"""

from __future__ import annotations

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


class ResizedCropTransform:
    """open_clip's training transform - RandomResizedCrop (bicubic), to RGB, ToTensor, Normalize - in one PIL resize
    from the crop box and one tensor expression, at about half its per-image cost. The crop box is drawn by
    torchvision's own `get_params` (the same random numbers, the same distribution); the pixels differ from
    crop-then-resize only at the crop's border, where the filter here also sees the pixels just outside it.
    `fast_train_transform` builds it from open_clip's `Compose`, or keeps the `Compose` when it holds anything else."""

    def __init__(self, crop, mean, std):
        self.crop = crop  # the torchvision RandomResizedCrop
        self.size = (int(crop.size[1]), int(crop.size[0]))  # (W, H) for PIL
        self.scale = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        from torchvision import transforms as T

        from training.data import needed_size

        self.min_size = needed_size(T.Compose([crop]))  # the loader decodes JPEGs reduced to this

    def __call__(self, img: Image.Image) -> torch.Tensor:
        i, j, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
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
