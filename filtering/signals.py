"""Per-sample signals: one row per sample of a shard, keyed by uid, computed once and filtered many times.

    uid key shard url caption image_ext image_bytes width height aspect_ratio decodable decode_error
    caption_chars caption_words generic_caption generic_reason sha256 phash [dfn_score]

`signal_rows` turns a shard's samples into column batches (plus the preprocessed crops a model needs); the score
stage runs it in CPU tasks and the model in actors.

Which resolution each signal is computed from (`SOURCES`; a test checks every entry): the sizes come from the
image's header, the exact hash and byte count from its bytes, the perceptual hash from the full decode (a reduced
decode changes 14% of hashes of 512-1024 px renders, by a few bits: not the same signal), and the model's crop from
the same full decode. With `phash_decode="reduced"` (`REDUCED_SOURCES`) one decode at the model's size
(`Preprocessor.min_size`) serves both the crop and the phash: less decoding, and a phash that depends on the model's
input size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from filtering.images import phash_hex, sha256_hex
from filtering.text import caption_signals
from pipeline.core.ids import sample_uid
from pipeline.core.images import DEFAULT_MAX_PIXELS, decode_image
from pipeline.core.sample import image_member, primary_caption, sample_meta
from pipeline.core.timing import TimeSplit

BASE_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("key", pa.string()),
    ("shard", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("image_ext", pa.string()),
    ("image_bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("aspect_ratio", pa.float32()),
    ("decodable", pa.bool_()),
    ("decode_error", pa.string()),
    ("caption_chars", pa.int32()),
    ("caption_words", pa.int32()),
    ("generic_caption", pa.bool_()),
    ("generic_reason", pa.string()),
    ("sha256", pa.string()),
    ("phash", pa.string()),
])
MODEL_FIELDS = [pa.field("dfn_score", pa.float32())]
SOURCES = {  # image signal -> what it is computed from (the other columns come from the caption and metadata)
    "width": "header", "height": "header", "aspect_ratio": "header",
    "image_bytes": "bytes", "sha256": "bytes", "image_ext": "member name",
    "decodable": "decode", "decode_error": "decode",
    "phash": "full decode",
    "pixels": "full decode",  # the model's crop: from the phash's decode, resized as open_clip does
}
REDUCED_SOURCES = {**SOURCES, "phash": "reduced decode", "pixels": "reduced decode"}  # phash_decode="reduced"


def signals_schema(with_model: bool) -> pa.Schema:
    schema = BASE_SCHEMA
    for f in MODEL_FIELDS if with_model else []:
        schema = schema.append(f)
    return schema


def sample_identity(key: str, files: dict[str, bytes], shard: str) -> tuple[str, str | None, str]:
    """(uid, url, caption) of a sample, the uid by the one rule (`pipeline.core.ids.sample_uid`)."""
    meta = sample_meta(files)
    caption = primary_caption(files, meta) or ""
    url = meta.get("url")
    # The download and ingest stages chose the uid by the same rule: JSON uid, URL hash, image hash.
    uid, _ = sample_uid(meta, image_member(files)[1], f"{shard}/{key}")
    return uid, url if isinstance(url, str) else None, caption


def decode_crops(data: bytes | None, max_pixels: int, preprocessors: list, full: bool = False):
    """(info, image, crops): one decode serving every preprocessor (at the largest size they ask for; full size when
    `full` or any of them needs the full image), and each one's crop (None where the image does not decode or the
    transform rejects it: then `info` says so)."""
    sizes = [p.min_size for p in preprocessors]
    min_size = None if full or not sizes or None in sizes else max(sizes)
    info, img = decode_image(data, max_pixels, min_size)
    crops = []
    for pre in preprocessors:
        crop = None
        if img is not None and info.decodable:
            try:
                crop = pre(img)
            except Exception as err:  # an image PIL decodes but the transform rejects is a bad row, not a bad shard
                info.decodable, info.decode_error = False, f"Preprocess: {type(err).__name__}: {err}"[:200]
        crops.append(crop)
    return info, img, crops


def sample_row(key: str, files: dict[str, bytes], shard: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               preprocess=None, phash_decode: str = "full") -> tuple[dict, np.ndarray | None]:
    """One sample's signals, and its preprocessed crop when `preprocess` is given and the image decodes. The phash
    needs the full decode unless `phash_decode="reduced"` (see the module's docstring)."""
    uid, url, caption = sample_identity(key, files, shard)
    image_ext, data = image_member(files)
    info, img, crops = decode_crops(data, max_pixels, [preprocess] if preprocess is not None else [],
                                    full=phash_decode == "full")
    row = {
        "uid": uid,
        "key": key,
        "shard": shard,
        "url": url,
        "caption": caption,
        "image_ext": image_ext,
        "image_bytes": info.image_bytes,
        "width": info.width,
        "height": info.height,
        "aspect_ratio": info.aspect_ratio,
        "decodable": info.decodable,
        "decode_error": info.decode_error,
        **caption_signals(caption),
        "sha256": sha256_hex(data),
        "phash": phash_hex(img) if info.decodable else None,
    }
    return row, crops[0] if crops else None


_INT_FIELDS = {"image_bytes": np.int64, "width": np.int32, "height": np.int32, "caption_chars": np.int32,
               "caption_words": np.int32}
_NULLABLE_INTS = ("width", "height")


def rows_to_columns(rows: list[dict], pixels: list | None, crop_shape=None) -> dict[str, np.ndarray]:
    """Rows -> a typed numpy column batch: missing strings are "", missing sizes -1, missing floats NaN.

    Sentinels rather than None keep every batch's Arrow types the same (a column of only None would be Arrow's
    null type in one block and string in the next); `to_table` turns them back into nulls.
    """
    cols: dict[str, np.ndarray] = {}
    for f in BASE_SCHEMA:
        values = [r[f.name] for r in rows]
        if f.name in _INT_FIELDS:
            cols[f.name] = np.array([-1 if v is None else v for v in values], dtype=_INT_FIELDS[f.name])
        elif pa.types.is_floating(f.type):
            cols[f.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        elif pa.types.is_boolean(f.type):
            cols[f.name] = np.array(values, dtype=bool)
        else:
            cols[f.name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    if pixels is not None:
        batch = np.zeros((len(rows), *crop_shape), dtype=np.uint8)  # (B, H, W, 3)
        for i, p in enumerate(pixels):
            if p is not None:
                batch[i] = p
        cols["pixels"] = batch
    return cols


def signal_batches(samples: Iterable[tuple[str, dict[str, bytes]]], shard: str, chunk_rows: int = 256,
                   max_pixels: int = DEFAULT_MAX_PIXELS, preprocess=None,
                   phash_decode: str = "full", split: TimeSplit | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Column batches of at most `chunk_rows` samples (bounded memory whatever the shard's size). With `split`,
    the time taken getting samples counts as reading, computing rows and crops as decoding."""
    rows, pixels = [], []
    shape = preprocess.shape if preprocess is not None else None
    split = split or TimeSplit()
    for key, files in split.timed(samples, "reading"):
        with split.part("decoding"):
            row, px = sample_row(key, files, shard, max_pixels, preprocess, phash_decode)
        rows.append(row)
        pixels.append(px)
        if len(rows) >= chunk_rows:
            yield rows_to_columns(rows, pixels if preprocess else None, shape)
            rows, pixels = [], []
    if rows:
        yield rows_to_columns(rows, pixels if preprocess else None, shape)


NULLABLE_STRINGS = ("url", "image_ext", "decode_error", "generic_reason", "sha256", "phash")


def to_table(cols: dict[str, np.ndarray], with_model: bool) -> pa.Table:
    """A typed column batch (sentinels for missing values) -> a signals table with the fixed schema and nulls."""
    schema = signals_schema(with_model)
    arrays = []
    for f in schema:
        values = np.asarray(cols[f.name])
        if f.name in _NULLABLE_INTS:
            arrays.append(pa.array(values.astype(np.int64), type=f.type, mask=values < 0))
        elif pa.types.is_floating(f.type):
            v = values.astype(np.float32)
            arrays.append(pa.array(v, type=f.type, mask=np.isnan(v)))
        elif f.name in NULLABLE_STRINGS:
            arrays.append(pa.array([str(v) if v else None for v in values], type=f.type))
        elif pa.types.is_string(f.type):
            arrays.append(pa.array([str(v) for v in values], type=f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
