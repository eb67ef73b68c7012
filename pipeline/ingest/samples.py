"""What an ingest decides about each sample, whatever its source: its uid (and the rule that chose it), its image
(through the one decoder: formats, pixel cap), its captions (the one caption rule), a verdict, and one parquet row
that keeps every metadata field the source had.

A sample is `{ext: bytes}` as the one capped tar reader yields it (`<key>.jpg`, `.txt`, `.json`); folder and
parquet sources build the same. Verdicts: `success`, or the first of `missing_image`, `refused_format`,
`too_many_pixels`, `undecodable_image`, `missing_caption`, `duplicate_uid` (a uid already seen in the shard).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.core.ids import sample_uid
from pipeline.core.images import DEFAULT_MAX_PIXELS, decode_image
from pipeline.core.sample import captions, image_member, sample_meta

# winnow's columns of an ingested shard's parquet (the download stage's, plus the uid rule and the image's facts)
ROW_SCHEMA = pa.schema([
    ("uid", pa.string()), ("uid_rule", pa.string()), ("key", pa.string()), ("url", pa.string()),
    ("caption", pa.string()), ("captions", pa.int32()), ("image_ext", pa.string()), ("image_bytes", pa.int64()),
    ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()), ("status", pa.string()),
    ("reason", pa.string()),
])
# JSON fields read into winnow's columns rather than kept as metadata
CONSUMED = {"uid", "url", "caption", "captions", "key"}
_DECODE_REASONS = (("missing:", "missing_image"), ("RefusedFormat", "refused_format"),
                   ("TooManyPixels", "too_many_pixels"))


@dataclass
class SourceShard:
    """One unit of a source, ingested as one output shard (`shard`). `stamp` fingerprints the unit (sizes, mtimes,
    etags): a rerun that finds another stamp re-ingests the shard. `payload` is what its reader needs."""

    shard: str
    kind: str
    label: str  # what it is, for messages: a tar's URL, `folder/ (files 0-9999)`, a parquet file and its rows
    stamp: str
    payload: Any = None
    in_place: str | None = None  # the tar read in place (webdataset sources)


def fingerprint(entries) -> str:  # noqa: ANN001 - any JSON-able items
    """A short stable hash of what identifies a source unit."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest()[:24]


def image_reason(error: str | None) -> str:
    """The verdict on an image the decoder refused (its `decode_error`)."""
    return next((reason for prefix, reason in _DECODE_REASONS if (error or "").startswith(prefix)),
                "undecodable_image")


def flat_value(value: Any) -> Any:
    """A metadata value as a parquet cell: scalars as they are, anything nested as its JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class ShardRows:
    """The rows of one shard as it is read, with its counts: verdicts, uid rules, uids seen."""

    shard: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    rows: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    uid_rules: Counter = field(default_factory=Counter)
    seen: set = field(default_factory=set)

    def add(self, key: str, files: dict, extra: dict | None = None) -> dict:
        """Judge one sample and keep its row; `extra` is metadata from beside the sample (a source parquet)."""
        meta = sample_meta(files)
        ext, data = image_member(files)
        uid, rule = sample_uid(meta, data, f"{self.shard}/{key}")
        info, _ = decode_image(data, self.max_pixels)
        caps = captions(files, meta)
        reason = None if info.decodable else image_reason(info.decode_error)
        if reason is None and not caps:
            reason = "missing_caption"
        if reason is None and uid in self.seen:
            reason = "duplicate_uid"
        self.seen.add(uid)
        url = meta.get("url")
        row = {"uid": uid, "uid_rule": rule, "key": key, "url": url if isinstance(url, str) else None,
               "caption": caps[0] if caps else None, "captions": len(caps), "image_ext": ext,
               "image_bytes": len(data) if data is not None else 0, "width": info.width, "height": info.height,
               "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
               "status": "success" if reason is None else "failed", "reason": reason or "success"}
        for name, value in [*(extra or {}).items(), *meta.items()]:
            if name in CONSUMED and name != "uid":
                continue
            if name == "uid" and isinstance(value, str) and value.lower() == uid:
                continue
            row[f"source_{name}" if name in ROW_SCHEMA.names else name] = flat_value(value)
        self.rows.append(row)
        self.reasons[row["reason"]] += 1
        self.uid_rules[rule] += 1
        return row

    def table(self) -> pa.Table:
        """The shard's parquet: winnow's columns, then every metadata column, rows in key order."""
        rows = sorted(self.rows, key=lambda r: r["key"])
        columns = {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in ROW_SCHEMA}
        extra = sorted({k for r in rows for k in r} - set(ROW_SCHEMA.names))
        for name in extra:
            values = [r.get(name) for r in rows]
            kinds = {type(v) for v in values if v is not None}
            if len(kinds - {int, float}) > 1 or (kinds & {str, bool} and kinds & {int, float}):
                values = [None if v is None else str(v) for v in values]  # mixed types: one string column
            columns[name] = pa.array(values)
        return pa.table(columns)

    def record(self) -> dict:
        """The counts for the shard's marker: samples, ok, reasons (not success), uid rules."""
        ok = self.reasons.get("success", 0)
        return {"samples": len(self.rows), "ok": ok,
                "reasons": {k: v for k, v in sorted(self.reasons.items()) if k != "success"},
                "uid_rules": dict(sorted(self.uid_rules.items()))}


def written_sample(image: dict[str, bytes], caps: list[str], meta: dict, url_col: str | None,
                   uid_col: str | None) -> dict[str, bytes]:
    """A sample to write, in the download stage's format, from an image, its captions and its metadata: `<ext>`,
    `.txt` (the first caption), `.json` (url and uid from their columns, `caption`, every caption in `captions`
    when there are several, the other metadata)."""
    meta = dict(meta)
    url, uid = meta.pop(url_col or "url", None), meta.pop(uid_col or "uid", None)
    if url:
        meta["url"] = str(url)
    if uid:
        meta["uid"] = str(uid)
    if caps:
        meta["caption"] = caps[0]
    if len(caps) > 1:
        meta["captions"] = caps
    files = dict(image)
    if caps:
        files["txt"] = caps[0].encode()
    files["json"] = json.dumps(meta, sort_keys=True, default=str).encode()
    return files


def with_uid(files: dict[str, bytes], key: str, uid: str) -> dict[str, bytes]:
    """The sample with its chosen uid and key in its JSON, as the download stage writes them."""
    meta = sample_meta(files)
    meta.update({"uid": uid, "key": key})
    return {**files, "json": json.dumps(meta, sort_keys=True, default=str).encode()}


class HashingReader:
    """A readable stream that hashes what passes through it: the sha256 of a tar read in place, at no second read.
    `finish()` reads what the reader left (a tar's end padding, or all after a damaged header) and returns the
    hex digest of the whole file."""

    def __init__(self, fileobj):  # noqa: ANN001
        self.fileobj, self.sha = fileobj, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(n)
        self.sha.update(data)
        return data

    def finish(self) -> str:
        while block := self.fileobj.read(1 << 20):
            self.sha.update(block)
        return self.sha.hexdigest()
