"""Conditioning of a flow: a caption becomes ids (in the loader), ids become a vector (in the model), and the vector
enters every coupling network and the base distribution (`multiscale.py`).

    class  the class whose name's words all appear in the caption (the longest such name), else one extra index
           meaning "none of them" (the synthetic worlds' captions name "<colour> <shape>")
    text   a bag of caption words hashed into buckets (crc32: stable across processes, unlike `hash`), averaged
           by an embedding bag trained with the flow: no text encoder to download, and captions that share words
           share conditioning
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from training.generative.flows.config import FlowModelConfig

WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    return WORD.findall(caption.lower())


class CaptionToClass:
    """Caption -> class id (a 0-d long tensor): index of the longest class name whose words are all in the caption,
    else len(classnames). A plain class, so spawned loader workers can pickle it."""

    def __init__(self, classnames: list[str]):
        order = sorted(range(len(classnames)), key=lambda i: -len(words(classnames[i])))
        self.names = [(i, set(words(classnames[i]))) for i in order]
        self.none = len(classnames)

    def __call__(self, caption: str) -> torch.Tensor:
        present = set(words(caption))
        found = next((i for i, name in self.names if name <= present), self.none)
        return torch.tensor(found, dtype=torch.long)


class CaptionToWords:
    """Caption -> (text_words,) long tensor of word buckets in [1, buckets]; 0 pads."""

    def __init__(self, buckets: int, length: int):
        self.buckets, self.length = buckets, length

    def __call__(self, caption: str) -> torch.Tensor:
        ids = [zlib.crc32(w.encode()) % self.buckets + 1 for w in words(caption)[:self.length]]
        return torch.tensor(ids + [0] * (self.length - len(ids)), dtype=torch.long)


class NoCondition:
    def __call__(self, caption: str) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)


def caption_encoder(cfg: FlowModelConfig, classnames: list[str] | None = None):
    if cfg.conditioning == "class":
        if not classnames or len(classnames) != cfg.classes:
            raise ValueError(f"class conditioning needs the {cfg.classes} class names the model was built with")
        return CaptionToClass(classnames)
    if cfg.conditioning == "text":
        return CaptionToWords(cfg.text_buckets, cfg.text_words)
    return NoCondition()


class Conditioner(nn.Module):
    """Ids from a caption encoder -> the conditioning vector (B, cond_dim)."""

    def __init__(self, cfg: FlowModelConfig):
        super().__init__()
        if cfg.conditioning == "class":
            if cfg.classes < 1:
                raise ValueError("class conditioning needs `classes` >= 1 (FlowTask sets it from the classnames)")
            self.embed = nn.Embedding(cfg.classes + 1, cfg.cond_dim)  # + 1: "names no class"
        else:
            self.embed = nn.EmbeddingBag(cfg.text_buckets + 1, cfg.cond_dim, mode="mean", padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)  # (B,) -> (B, D) or (B, T) -> (B, D)
