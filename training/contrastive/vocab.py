"""CatLIP's label space: the most frequent words of the training captions, and a caption's multi-hot target.

CatLIP (Mehta et al., 2024) maps captions to WordNet synsets; we keep the idea without the dependency: lower-cased
alphabetic words, minus a short stop list, counted over the captions and cut to the `size` most frequent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

from pipeline.core.layout import join, read_json, write_json_atomic
from pipeline.core.sample import captions
from pipeline.core.storage import exists
from training.contrastive.config import LossConfig
from training.data import ErrorCounter, tar_samples

STOP_WORDS = frozenset(
    "a an the of on in at to and or with for from by is are was were be this that these those it its as into "
    "photo picture image images photos pictures stock".split())
WORD = re.compile(r"[a-z]+")


def words(caption: str) -> list[str]:
    return [w for w in WORD.findall(caption.lower()) if w not in STOP_WORDS and len(w) > 1]


def build_vocab(captions: Iterable[str], size: int, min_count: int = 1) -> list[str]:
    """The `size` most frequent words (each counted once per caption) seen in at least `min_count` captions."""
    counts = Counter()
    for caption in captions:
        counts.update(set(words(caption)))
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    if not ranked:
        raise ValueError("CatLIP: no caption word is frequent enough to be a label (lower catlip_min_count?)")
    return ranked[:size]


def captions_of(urls: list[str], limit: int) -> Iterable[str]:
    """Up to `limit` captions read from the shards (every caption of a multi-caption sample)."""
    n = 0
    for sample in tar_samples(urls, ErrorCounter()):
        for caption in captions(sample):
            yield caption
            n += 1
        if n >= limit:
            return


def run_vocab(cfg: LossConfig, shards: list[str], out_dir: str) -> list[str]:
    """Build a run's vocabulary once, as `<out_dir>/catlip_vocab.json`; reuse the saved one on resume, so label ids
    stay fixed."""
    url = join(out_dir, "catlip_vocab.json")
    if exists(url):
        return read_json(url)["words"]
    words = build_vocab(captions_of(shards, cfg.catlip_vocab_samples), cfg.catlip_vocab_size, cfg.catlip_min_count)
    write_json_atomic(url, {"words": words})
    return words


class WordTargets:
    """Caption -> (V,) multi-hot float vector over the vocabulary (a class, so loader workers can pickle it)."""

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __call__(self, caption: str) -> torch.Tensor:
        target = torch.zeros(len(self.vocab))
        for w in words(caption):
            if w in self.index:
                target[self.index[w]] = 1.0
        return target

    def class_matrix(self, classnames: list[str]) -> torch.Tensor:
        """(C, V): row c averages the vocabulary words of class name c, for zero-shot with the word classifier."""
        rows = torch.zeros(len(classnames), len(self.vocab))
        for c, name in enumerate(classnames):
            hits = [self.index[w] for w in words(name) if w in self.index]
            for i in hits:
                rows[c, i] = 1.0 / len(hits)
        return rows
