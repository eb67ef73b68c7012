"""Image-folder sources: image files under a folder (recursively, in path order), captioned by a `.txt` beside each
image or by a captions table: CSV or JSONL (`file_name`, `caption`; a file on several rows, or a list of captions in
one, has several captions) or a COCO captions JSON (`images` with `file_name`, `annotations` with `image_id` and
`caption`). Every caption of an image is kept, as CapFilt's candidates are (the sample's JSON `captions` list, the
first in `.txt`). Links are refused and counted, as the tar reader refuses them. The folder is cut into shards of
`samples_per_shard` images; each is written as a winnow shard (a copy by nature: there is no tar to read in place).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.images import IMAGE_EXTS
from pipeline.core.layout import file_stamp, fs_and_path, join
from pipeline.core.shards import MAX_MEMBER_BYTES
from pipeline.ingest.config import FolderSource
from pipeline.ingest.samples import SourceShard, fingerprint


def list_images(path: str) -> tuple[list[dict], set[str]]:
    """(images: relpath, size, stamp, link; sidecar .txt relpaths) under a folder, in path order."""
    fs, base = fs_and_path(path)
    if not fs.isdir(base):
        raise FileNotFoundError(path)
    base = base.rstrip("/")
    images, texts = [], set()
    for p, info in sorted(fs.find(base, detail=True).items()):
        rel = p[len(base):].lstrip("/")
        ext = posixpath.splitext(rel)[1].lower().lstrip(".")
        if ext == "txt":
            texts.add(rel)
        elif ext in IMAGE_EXTS:
            images.append({"rel": rel, "size": int(info.get("size") or 0), "stamp": file_stamp(info),
                           "link": bool(info.get("islink"))})
    return images, texts


def read_table(url: str, src: FolderSource, where: str) -> list[dict]:
    """A captions table's rows as {file, caption(s), other columns}; COCO JSON becomes one row per image."""
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8-sig")
    if url.endswith(".json") and text.lstrip().startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ConfigError(f"{where}.captions: {url} is a JSON object without `images` and `annotations` (a COCO "
                              "captions file has both); use CSV or JSONL for other tables")
        caps: dict[Any, list[str]] = defaultdict(list)
        for ann in sorted(data["annotations"], key=lambda a: (a.get("image_id"), a.get("id", 0))):
            caps[ann.get("image_id")].append(ann.get("caption"))
        return [{**img, src.file_col: img.get("file_name"), src.caption_col: caps.get(img.get("id"), [])}
                for img in data["images"]]
    if url.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    for col in [src.file_col, src.caption_col, *[c for c in (src.url_col, src.uid_col) if c]]:
        if rows and col not in rows[0]:
            raise ConfigError(f"{where}: {url} has no column {col!r} (its columns: {', '.join(rows[0])})")
    return rows


def caption_index(rows: list[dict], src: FolderSource) -> dict[str, dict]:
    """file name -> {"captions": [...], "meta": the first row's other columns}; several rows add captions."""
    out: dict[str, dict] = {}
    for row in rows:
        name = str(row.get(src.file_col) or "").strip().lstrip("./")
        value = row.get(src.caption_col)
        entry = out.setdefault(name, {"captions": [], "meta": {k: v for k, v in row.items()
                                                               if k not in (src.file_col, src.caption_col)}})
        entry["captions"] += [c for c in (value if isinstance(value, list) else [value]) if isinstance(c, str)]
    return out


def plan(src: FolderSource, where: str, samples_per_shard: int) -> tuple[list[SourceShard], dict]:
    """Shards of `samples_per_shard` images, each with its images' captions and metadata in its payload; and what
    planning found (table rows naming no image)."""
    try:
        images, texts = list_images(src.path)
    except FileNotFoundError:
        raise ConfigError(f"{where}.path: {src.path} is not a folder") from None
    if not images:
        raise ConfigError(f"{where}.path: no image ({', '.join(IMAGE_EXTS)}) under {src.path}")
    table, table_stamp, info = None, None, {}
    if src.captions:
        fs, path = fs_and_path(src.captions)
        if not fs.exists(path):
            raise ConfigError(f"{where}.captions: {src.captions} does not exist")
        table_stamp = file_stamp(fs.info(path))
        table = caption_index(read_table(src.captions, src, f"{where}.captions"), src)
        names = defaultdict(list)
        for img in images:
            names[posixpath.basename(img["rel"])].append(img["rel"])
        used = set()
        for img in images:
            base = posixpath.basename(img["rel"])
            name = img["rel"] if img["rel"] in table else base if len(names[base]) == 1 and base in table else None
            img["entry"] = table.get(name) if name else None
            used.add(name)
        info["captions_without_image"] = len(set(table) - used)
    for img in images:
        if table is None:
            side = posixpath.splitext(img["rel"])[0] + ".txt"
            img["txt"] = side if side in texts else None
    shards = []
    for i, start in enumerate(range(0, len(images), samples_per_shard)):
        part = images[start:start + samples_per_shard]
        shards.append(SourceShard(
            shard=f"{i:05d}", kind="folder", label=f"{src.path} (images {start}-{start + len(part) - 1})",
            stamp=fingerprint([[p["rel"], p["stamp"], p.get("txt")] for p in part] + [table_stamp, src.model_dump()]),
            payload={"root": src.path, "images": part, "url_col": src.url_col, "uid_col": src.uid_col}))
    return shards, info


def _read(url: str, size: int) -> bytes | None:
    if size > MAX_MEMBER_BYTES:
        return None
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return f.read(MAX_MEMBER_BYTES + 1)


def folder_samples(unit: SourceShard, skipped: dict) -> Iterator[tuple[str, dict[str, bytes], dict]]:
    """(file relpath, {ext: image bytes}, {captions, url, uid, metadata}) per image of a shard; a link or an image
    over the member cap is counted in `skipped` and read as a sample without an image."""
    p = unit.payload
    for img in p["images"]:
        data = None
        if img["link"]:
            skipped["link_member"] = skipped.get("link_member", 0) + 1
        else:
            data = _read(join(p["root"], img["rel"]), img["size"])
            if data is None or len(data) > MAX_MEMBER_BYTES:
                skipped["member_too_large"] = skipped.get("member_too_large", 0) + 1
                data = None
        entry = img.get("entry") or {}
        caps, meta = list(entry.get("captions") or []), dict(entry.get("meta") or {})
        if img.get("txt"):
            raw = _read(join(p["root"], img["txt"]), 0) or b""
            caps = [line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
        ext = posixpath.splitext(img["rel"])[1].lower().lstrip(".")
        yield img["rel"], ({ext: data} if data is not None else {}), {"captions": caps, "meta": meta}
