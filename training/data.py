"""The training loader: an endless, shuffled stream of (image, text) batches from webdataset shards.

Each (Ray world rank, DataLoader worker) pair is one reader. Every pass over the data, all readers shuffle the
shard list with the same seed and reader i takes shards i, i + R, i + 2R, ... (R readers); with fewer shards than
readers each reader instead draws a random shard per pass (webdataset's "resampled" mode). Samples are shuffled
in a bounded buffer of raw bytes, then decoded and preprocessed inside the DataLoader worker. A sample whose image
does not decode or that has no caption is skipped and counted; the count rides along with each batch.

Captions: `<key>.json` may hold `captions: [...]` (several captions per image, e.g. from CapFilt); one is drawn at
random each time the sample is read. Without it, `<key>.txt` is the caption (then the JSON's `caption`).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import random
from collections.abc import Callable, Iterator

import braceexpand
import fsspec
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.layout import fs_and_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class NoShardsError(ValueError):
    """A shard pattern or dataset that names no shard."""


def expand_shards(pattern: str) -> list[str]:
    """Brace-expand, then glob, a shard pattern (`/data/{00000..00009}.tar`, `/data/*.tar`, `s3://b/*.tar`)."""
    out: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        if any(c in part for c in "*?["):
            fs, path = fs_and_path(part)
            found = sorted(glob.glob(path)) if "file" in fs.protocol else sorted(fs.glob(path))
            scheme = part.split("://", 1)[0] + "://" if "://" in part and "file" not in fs.protocol else ""
            out.extend(scheme + p for p in found)
        else:
            fs, path = fs_and_path(part)
            if fs.exists(path):
                out.append(part)
    if not out:
        raise NoShardsError(f"no shard matches the pattern {pattern!r}")
    return out


def pick_caption(sample: dict, rng: random.Random) -> str | None:
    """One caption: a random entry of the JSON's `captions` list if present, else `.txt`, else JSON `caption`."""
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    captions = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
    if captions:
        return rng.choice(captions)
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
        if text:
            return text
    caption = meta.get("caption")
    return caption if isinstance(caption, str) and caption.strip() else None


def decode_image(sample: dict) -> Image.Image:
    for ext in IMAGE_EXTS:
        if ext in sample:
            img = Image.open(io.BytesIO(sample[ext]))
            img.load()  # decode now, so a truncated file fails here and is counted
            return img.convert("RGB")
    raise KeyError("no image member")


class ErrorCounter:
    """Collects tar-level errors (a truncated shard, a bad member) instead of raising; see `tar_samples`."""

    def __init__(self):
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        return True  # keep going with the next member / shard


def open_shard(url: str):
    """A readable binary stream of a shard: a plain file for local paths (the fast path), fsspec for the rest
    (`s3://`, `gs://`, ...; webdataset's own opener does not speak them)."""
    protocol, path = fsspec.core.split_protocol(url)
    if protocol in (None, "file", "local"):
        return open(path, "rb")
    fs, path = fs_and_path(url)
    return fs.open(path, "rb")


def _streams(urls: list[str], on_error: ErrorCounter) -> Iterator[dict]:
    """webdataset's `url_opener` through `open_shard`; each stream is closed once its tar has been read."""
    for url in urls:
        try:
            stream = open_shard(url)
        except Exception as exn:  # a missing or unreadable shard is counted, like a damaged one
            if on_error(exn):
                continue
            raise
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()


def tar_samples(urls: list[str], on_error: ErrorCounter) -> Iterator[dict]:
    """Raw samples (`{"__key__", "jpg": bytes, "txt": bytes, ...}`) of the shards, in order."""
    files = tar_file_expander(_streams(urls, on_error), handler=on_error)
    yield from group_by_keys(files, handler=on_error)


class ShardStream(IterableDataset):
    """Yields `(image (3, H, W), text, skipped)` forever; `skipped` counts samples dropped since the last yield."""

    def __init__(self, urls: list[str], preprocess: Callable, encode_text: Callable[[str], torch.Tensor],
                 rank: int = 0, world: int = 1, seed: int = 0, shuffle_buffer: int = 512):
        self.urls, self.preprocess, self.encode_text = list(urls), preprocess, encode_text
        self.rank, self.world, self.seed, self.shuffle_buffer = rank, world, seed, shuffle_buffer

    def reader(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return self.rank * nw + wid, self.world * nw

    def shards(self) -> Iterator[list[str]]:
        """This reader's shards for pass 0, 1, 2, ..."""
        slot, slots = self.reader()
        rng = random.Random(f"{self.seed}-{slot}")
        for epoch in itertools.count():
            order = list(self.urls)
            random.Random(f"{self.seed}-pass-{epoch}").shuffle(order)  # the same order on every reader
            yield order[slot::slots] if len(order) >= slots else [rng.choice(order)]

    def raw(self, errors: ErrorCounter) -> Iterator[dict]:
        slot, _ = self.reader()
        rng = random.Random(f"{self.seed}-shuffle-{slot}")
        buf: list[dict] = []
        empty_passes = 0
        for shards in self.shards():
            read = 0
            for sample in tar_samples(shards, errors):
                read += 1
                if self.shuffle_buffer <= 1:
                    yield sample
                    continue
                if len(buf) < self.shuffle_buffer:
                    buf.append(sample)
                    continue
                i = rng.randrange(len(buf))
                buf[i], sample = sample, buf[i]
                yield sample
            # An endless stream over shards that yield nothing would spin forever: fail, naming them.
            empty_passes = empty_passes + 1 if read == 0 else 0
            if empty_passes > max(8, len(self.urls)):
                raise RuntimeError(f"no readable sample in {empty_passes} passes over shards such as {shards[:3]} "
                                   f"({errors.count} read errors): are the paths right and the shards intact?")

    def __iter__(self):
        slot, _ = self.reader()
        rng = random.Random(f"{self.seed}-caption-{slot}")
        errors, skipped, seen_errors = ErrorCounter(), 0, 0
        for sample in self.raw(errors):
            skipped += errors.count - seen_errors
            seen_errors = errors.count
            caption = pick_caption(sample, rng)
            try:
                image = self.preprocess(decode_image(sample))
            except Exception:  # any undecodable image: PIL raises many kinds
                skipped += 1
                continue
            if caption is None:
                skipped += 1
                continue
            yield image, self.encode_text(caption), skipped
            skipped = 0


def make_loader(stream: ShardStream, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


class TokenEncoder:
    """Caption -> (T,) token ids with open_clip's tokenizer (a class, so spawned loader workers can pickle it)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, caption: str) -> torch.Tensor:
        return self.tokenizer([caption])[0]
