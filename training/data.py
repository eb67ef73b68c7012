"""The training loader every task shares: an endless, shuffled stream of (image, text) batches from webdataset
shards.

Each (Ray world rank, DataLoader worker) pair is one reader. Every pass over the data, all readers shuffle the
shard list with the same seed and reader i takes shards i, i + R, i + 2R, ... (R readers); with fewer shards than
readers each reader instead draws a random shard per pass (webdataset's "resampled" mode). Samples are shuffled
in a bounded buffer of raw bytes, then decoded and preprocessed inside the DataLoader worker. A sample whose image
does not decode, or that has no caption when the task reads text, is skipped and counted; the count rides along with
each batch. A task that ignores text says so (`needs_text=False`): its samples need no caption, and the stream
yields an empty text for them.

Images are decoded at the size the preprocessing needs (`decode_size`, found from the transform by
`needed_size`): a JPEG bigger than that is decoded at 1/2, 1/4 or 1/8 scale by libjpeg-turbo, and the transform
resizes only the rest.

Shards are read by the one capped reader (`pipeline.core.shards`), images decoded by the one decoder
(`pipeline.core.images`: accepted formats, pixel cap) and captions chosen by the one rule (`pipeline.core.sample`):
one of a sample's captions is drawn at random each time it is read. A task supplies the image preprocessing and
the caption encoding (the contrastive task: open_clip's transform and tokenizer; the diffusion task: [-1, 1]
pixels and the caption itself, which it encodes with its frozen text tower).
"""

from __future__ import annotations

import glob
import itertools
import math
import random
from collections.abc import Callable, Iterator

import braceexpand
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.core.images import open_rgb
from pipeline.core.layout import fs_and_path
from pipeline.core.sample import image_member, pick_caption
from pipeline.core.shards import ReadReport, read_samples


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


class ErrorCounter:
    """Counts what a read passed over: refused or repeated tar members, a damaged or missing shard."""

    def __init__(self):
        self.count = 0

    def add(self, report: ReadReport) -> None:
        self.count += sum(report.skipped.values()) + (1 if report.error else 0)


def tar_samples(urls: list[str], errors: ErrorCounter) -> Iterator[dict]:
    """Raw samples (`{"__key__", "jpg": bytes, "txt": bytes, ...}`) of the shards, in order, through the one capped
    reader (`pipeline.core.shards`): refused members and damaged or missing shards are counted in `errors`."""
    for url in urls:
        report = ReadReport()
        try:
            for key, files in read_samples(url, report):
                yield {"__key__": key, **files}
        except OSError as err:  # a missing or unreadable shard is counted, like a damaged one
            report.error = f"{type(err).__name__}: {err}"
        finally:
            errors.add(report)


def needed_size(preprocess) -> int | None:
    """The short side an image needs so that `preprocess` still shrinks it (None: it needs the full image).

    A transform may say so itself (`min_size`); in a torchvision `Compose`, the first resizing step says:
    `RandomResizedCrop` needs its output over the side of its smallest crop (sqrt(min scale x min aspect) of the
    short side), `Resize(int)` its size."""
    if hasattr(preprocess, "min_size"):
        return preprocess.min_size
    from torchvision import transforms as T

    for step in getattr(preprocess, "transforms", []):
        if isinstance(step, T.RandomResizedCrop):
            smallest = math.sqrt(step.scale[0] * min(step.ratio[0], 1 / step.ratio[1]))  # of the short side
            return math.ceil(max(step.size) / min(1.0, smallest))
        if isinstance(step, T.Resize):
            return step.size if isinstance(step.size, int) else max(step.size)
        if isinstance(step, T.CenterCrop | T.RandomCrop | T.FiveCrop | T.Pad):
            return None  # crops a fixed number of pixels: the full image
    return None


class ShardStream(IterableDataset):
    """Yields `(image (3, H, W), text, skipped)` forever; `skipped` counts samples dropped since the last yield.

    `decode_size`: the short side to decode at ("auto": `needed_size(preprocess)`; None: the full image).
    `needs_text`: False for a task that ignores text (samples without a caption are kept, their text is "")."""

    def __init__(self, urls: list[str], preprocess: Callable, encode_text: Callable[[str], torch.Tensor],
                 rank: int = 0, world: int = 1, seed: int = 0, shuffle_buffer: int = 512, *,
                 decode_size: int | str | None = "auto", needs_text: bool = True):
        self.urls, self.preprocess, self.encode_text = list(urls), preprocess, encode_text
        self.rank, self.world, self.seed, self.shuffle_buffer = rank, world, seed, shuffle_buffer
        self.decode_size = needed_size(preprocess) if decode_size == "auto" else decode_size
        self.needs_text = needs_text

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
            if caption is None and self.needs_text:
                skipped += 1
                continue
            try:
                image = self.preprocess(open_rgb(image_member(sample)[1], min_size=self.decode_size))
            except Exception:  # any undecodable image: PIL raises many kinds
                skipped += 1
                continue
            yield image, self.encode_text(caption if caption is not None else ""), skipped
            skipped = 0


def make_loader(stream: ShardStream, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
