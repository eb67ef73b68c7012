"""Where a dataset's files live, and how they are written so that a crash never leaves a half file that looks whole.

    <root>/<name>/
      manifest.json                 one section per stage that wrote here
      shards/00000.tar|.parquet     webdataset shard + one metadata row per sample
      shards/_done/00000            JSON: the shard's counts and file checksums, written last
      signals/00000.parquet         per-uid scores (score stage); embeddings/00000.npy
      selection/<recipe>.parquet    filter stage
      report/index.html

Paths are fsspec URLs (local by default). Files are written to a temporary name and renamed; the `_done` marker
comes after every file of the shard is in place, so "marker exists" means "shard complete". On a local disk each file
is fsynced before its rename and the folder after it, so a power cut cannot leave a marker naming lost data.

A dataset's name is one path component (`pool`, `curated-v2`): no separators, no `..`, nothing absolute.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec

_DATASET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=+-]{0,127}$")


def check_dataset_name(name: str) -> str:
    """`name` if it is a safe dataset name (one path component under the run root), else ValueError saying why."""
    if not isinstance(name, str) or not _DATASET_NAME.match(name) or name.strip(".") == "":
        raise ValueError(f"{name!r} is not a dataset name: use letters, digits and . _ - = + (at most 128, not "
                         "starting with '.' or '-'); no '/', '\\', '..' or absolute path, since a dataset is one "
                         "folder under the run root")
    return name


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol, _ = fsspec.core.split_protocol(url)
    # Ray tasks in other processes write the shards and markers that the driver lists next: a cached listing of an
    # object store (s3fs, gcsfs) would hide them, so remote listings are always fresh.
    options = {} if protocol in (None, "file", "local") else {"use_listings_cache": False}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def open_binary(url: str):
    """A readable binary stream: a plain file for local paths (the fast path: no fsspec wrapper on every read),
    fsspec for the rest (`s3://`, `gs://`, ...)."""
    protocol, path = fsspec.core.split_protocol(url)
    if protocol in (None, "file", "local"):
        return open(path, "rb")
    fs, path = fs_and_path(url)
    return fs.open(path, "rb")


def is_local(url: str) -> bool:
    fs, _ = fs_and_path(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(base: str, *parts: str) -> str:
    """Join URL-ish paths without losing the `s3://` scheme."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(base, *parts)


def sha256_file(fs: fsspec.AbstractFileSystem, path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    """Size and sha256 of a written file; recorded in the shard's marker and the manifest."""
    return {"size": int(fs.size(path)), "sha256": sha256_file(fs, path)}


def file_stamp(info: dict) -> dict:
    """What says a file changed, from fsspec's `info()`: its size, modification time and etag (whichever the
    store reports: `mtime` locally, `LastModified` / `ETag` on S3, `updated` / `md5Hash` on GCS)."""
    stamp: dict[str, Any] = {"size": int(info.get("size") or 0)}
    for out, keys in (("mtime", ("mtime", "LastModified", "updated", "last_modified")),
                      ("etag", ("ETag", "etag", "md5Hash", "generation"))):
        value = next((info[k] for k in keys if info.get(k) is not None), None)
        if value is not None:
            stamp[out] = str(value)
    return stamp


def source_record(url: str, sha256: str | None = None) -> dict:
    """The marker entry of a file read in place (a source tar an ingest did not copy): its URL, its stamp (size,
    mtime, etag) and, when the reader computed it on the way, its sha256. `Dataset.shard_source` answers with the
    URL; `verify_shard` compares the stamp, without reading the file again."""
    fs, path = fs_and_path(url)
    stamp = file_stamp(fs.info(path))
    return {"url": url, "size": stamp["size"], "stamp": stamp, "sha256": sha256}


def fsync_file(path: str) -> None:
    """Flush a local file's data to disk: a done marker written next must not outlive the data it vouches for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a local folder's entries (names created or renamed in it) to disk."""
    if os.name != "posix":  # a folder cannot be opened for fsync on Windows; NTFS journals its metadata
        return
    fsync_file(path)


@contextmanager
def atomic_write(url: str, mode: str = "wb") -> Iterator[Any]:
    """Write to `<url>.tmp-<random>` and rename into place on success; remove the temp file on failure. Locally,
    the file is fsynced before the rename and its folder after."""
    fs, path = fs_and_path(url)
    folder = posixpath.dirname(path) if "://" in url else os.path.dirname(path)
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    local = is_local(url)
    try:
        with fs.open(tmp, mode) as f:
            yield f
        if local:
            fsync_file(tmp)
        fs.mv(tmp, path)
        if local:
            fsync_dir(folder or ".")
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_json_atomic(url: str, data: Any) -> None:
    with atomic_write(url, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)


def read_json(url: str) -> Any:
    fs, path = fs_and_path(url)
    with fs.open(path, "r") as f:
        return json.load(f)


def source_problems(want: dict) -> list[str]:
    """Problems with a file read in place against its recorded stamp (empty = unchanged since it was ingested)."""
    url = want["url"]
    fs, path = fs_and_path(url)
    try:
        now = file_stamp(fs.info(path))
    except FileNotFoundError:
        return [f"{url}: source missing"]
    was = want.get("stamp") or {"size": want.get("size")}
    changed = [f"{k} {was.get(k)} -> {now.get(k)}" for k in ("size", "mtime", "etag") if was.get(k) != now.get(k)]
    return [f"{url}: source changed since it was ingested ({', '.join(changed)})"] if changed else []


class Dataset:
    """A dataset directory under the run root, e.g. `runs/demo/pool`."""

    def __init__(self, root: str, name: str):
        self.root = root
        self.name = check_dataset_name(name)
        self.url = join(root, name)
        self.fs, self.path = fs_and_path(self.url)

    def __repr__(self) -> str:
        return f"Dataset({self.url!r})"

    # --- paths -------------------------------------------------------------------------------------------------
    def sub(self, *parts: str) -> str:
        return join(self.url, *parts)

    def shard_file(self, shard: str, ext: str, folder: str = "shards") -> str:
        return self.sub(folder, f"{shard}.{ext}")

    def marker(self, shard: str, folder: str = "shards") -> str:
        return self.sub(folder, "_done", shard)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def shard_source(self, shard: str, ext: str = "tar", record: dict | None = None, folder: str = "shards") -> str:
        """Where a complete shard's file is read: the source it was ingested from in place (the marker's entry has a
        `url`), else its place in this dataset. `record` is the shard's marker when the caller has it."""
        if record is None:
            record = self.done_shards(folder, only=shard).get(shard, {})
        entry = (record.get("files") or {}).get(f"{folder}/{shard}.{ext}") or {}
        return entry.get("url") or self.shard_file(shard, ext, folder)

    # --- done markers ------------------------------------------------------------------------------------------
    def done_shards(self, folder: str = "shards", only: str | None = None) -> dict[str, dict]:
        """Markers of complete shards: shard name -> the marker's JSON (counts, checksums); `only`: that one."""
        fs, path = fs_and_path(self.sub(folder, "_done"))
        if only is not None:
            paths = [f"{path.rstrip('/')}/{only}"]
            if not fs.exists(paths[0]):
                return {}
        elif not fs.exists(path):
            return {}
        else:
            paths = sorted(fs.ls(path, detail=False))
        out = {}
        for p in paths:
            name = posixpath.basename(p.rstrip("/"))
            if ".tmp-" in name:
                continue
            with fs.open(p, "r") as f:
                try:
                    out[name] = json.load(f)
                except json.JSONDecodeError:
                    continue  # a marker that is not JSON was not written by us completely: the shard is redone
        return out

    def write_marker(self, shard: str, record: dict, folder: str = "shards") -> None:
        write_json_atomic(self.marker(shard, folder), record)

    def remove_marker(self, shard: str, folder: str = "shards") -> None:
        fs, path = fs_and_path(self.marker(shard, folder))
        if fs.exists(path):
            fs.rm(path)

    def verify_shard(self, record: dict) -> list[str]:
        """Problems with a done shard's files against the checksums in its marker (empty = intact)."""
        problems = []
        for rel, want in record.get("files", {}).items():
            if want.get("url"):
                problems += source_problems(want)
                continue
            fs, path = fs_and_path(self.sub(rel))
            if not fs.exists(path):
                problems.append(f"{rel}: missing")
                continue
            size = int(fs.size(path))
            if size != want["size"]:
                problems.append(f"{rel}: size {size} != recorded {want['size']} (truncated or rewritten)")
            elif sha256_file(fs, path) != want["sha256"]:
                problems.append(f"{rel}: sha256 differs from the recorded checksum (corrupted)")
        return problems

    def intact_shards(self, shards: list[str] | None = None, folder: str = "shards") -> dict[str, dict]:
        """Markers of complete shards (all, or those named) after checking their files against the recorded
        checksums: a consumer calls this before reading, so a shard damaged on disk is reported, not half-read."""
        from pipeline.core.errors import DamagedShards

        done = self.done_shards(folder)
        wanted = sorted(done) if shards is None else [s for s in shards if s in done]
        damaged = {s: problems for s in wanted if (problems := self.verify_shard(done[s]))}
        if damaged:
            writer = self.writer_of(folder)
            lines = "\n".join(f"  {self.sub(folder)}/{s}: {'; '.join(p)}" for s, p in sorted(damaged.items()))
            fix = (f"run stage {writer!r} again (`winnow run CONFIG --stage {writer}`): it finds the damage and "
                   "rebuilds only these shards" if writer else "rerun the stage that wrote them")
            raise DamagedShards(f"{len(damaged)} shard(s) of {self.url} changed on disk since they were written "
                                f"or ingested (checksum or stamp mismatch):\n{lines}\nTo repair: {fix}.")
        return {s: done[s] for s in wanted}

    def writer_of(self, folder: str = "shards") -> str | None:
        """The stage whose manifest section holds checksums of this folder's files (download, reshard, ...)."""
        for stage, section in (self.manifest().get("stages") or {}).items():
            files = next(iter((section.get("checksums") or {}).values()), {})
            if any(f.startswith(f"{folder}/") for f in files):
                return stage
        return None

    def shard_files(self, folder: str = "shards", ext: str = "tar") -> list[str]:
        """Complete shards' files of one extension, in shard order, where they are read (see `shard_source`;
        incomplete shards are not listed)."""
        return [self.shard_source(s, ext, rec, folder) for s, rec in sorted(self.done_shards(folder).items())]

    # --- manifest ----------------------------------------------------------------------------------------------
    @property
    def manifest_url(self) -> str:
        return self.sub("manifest.json")

    def manifest(self) -> dict:
        fs, path = fs_and_path(self.manifest_url)
        if not fs.exists(path):
            return {"dataset": self.name, "stages": {}}
        return read_json(self.manifest_url)

    def update_manifest(self, stage: str, section: dict) -> dict:
        """Replace this stage's section of the manifest (read-modify-write; stages of one run are sequential)."""
        m = self.manifest()
        m.setdefault("stages", {})[stage] = {**section, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self.manifest_url, m)
        return m
