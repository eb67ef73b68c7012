"""The contrastive task's part of the loader: captions to open_clip tokens. The loader itself (shard expansion, the
capped reader, the shuffled stream) is shared by every task and lives in `training.data`; its names are imported
here for the modules and tests that read them from this one.
"""

from __future__ import annotations

import torch

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
