"""A run's files on any fsspec path (local, `s3://`, `gs://`), for code that only speaks the local disk.

torch, open_clip and img2dataset read and write local files, and Ray Train takes a pyarrow filesystem. This module
bridges them to winnow's storage: `local_copy` stages a remote file or folder in a temporary local folder,
`upload` puts a local file or folder in place (each file under a temporary name, then renamed), and
`arrow_filesystem` gives Ray Train a pyarrow view of the same fsspec filesystem, so one set of credentials and
endpoints serves every stage. Those come from fsspec: for S3 the usual AWS variables, `~/.aws` or an instance role,
and `AWS_ENDPOINT_URL` or `FSSPEC_S3_ENDPOINT_URL` for an S3-compatible server (fsspec passes
`FSSPEC_<PROTOCOL>_<KWARG>` variables as filesystem arguments).
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.core.errors import WinnowError
from pipeline.core.layout import atomic_write, fs_and_path, is_local, join

log = logging.getLogger(__name__)

_warned: set[str] = set()


def is_remote(url: str) -> bool:
    return not is_local(url)


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def remove(url: str) -> None:
    fs, path = fs_and_path(url)
    fs.rm(path)


def local_path(url: str) -> str:
    """The plain path of a local URL (`file:///a/b` -> `/a/b`)."""
    return fs_and_path(url)[1]


class UnsafeObjectKey(WinnowError):
    """An object key that would place a copied file outside the folder it is copied into."""


def safe_relative(key: str, base: str) -> list[str]:
    """The parts of `key` below `base`, as written (never normalised, so `a/../../x` cannot climb out); raises
    UnsafeObjectKey for a key whose parts include `..`, `.`, an empty part or a backslash."""
    rel = key[len(base):].lstrip("/") if key.startswith(base) else key
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise UnsafeObjectKey(f"refusing to copy {key!r}: its key would land outside the local folder it is "
                              f"copied into (parts {parts!r} below {base!r})")
    return parts


@contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local path holding `url`'s file or folder: the path itself when local, else a temporary download that is
    removed on exit. Every file lands inside the temporary folder, whatever its object key says (UnsafeObjectKey
    otherwise, before anything is written)."""
    if not is_remote(url):
        yield local_path(url)
        return
    fs, path = fs_and_path(url)
    tmp = tempfile.mkdtemp(prefix="winnow-get-")
    try:
        name = posixpath.basename(path.rstrip("/"))
        local = os.path.join(tmp, name if name not in ("", ".", "..") else "data")
        if fs.isdir(path):
            base = path.rstrip("/")
            targets = [(f, os.path.join(local, *safe_relative(f, base))) for f in fs.find(base)]
            root = os.path.realpath(local)
            for f, dst in targets:
                if os.path.commonpath([root, os.path.realpath(dst)]) != root:  # belt and braces
                    raise UnsafeObjectKey(f"refusing to copy {f!r} to {dst}, outside {local}")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                fs.get_file(f, dst)
        else:
            fs.get_file(path, local)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def local_if_url(value: str | None) -> Iterator[str | None]:
    """`value` as is (a tag, a name, a local path, None), or a local copy when it is a URL such as `s3://b/model.pt`:
    for arguments like open_clip's `pretrained`, which take either."""
    if value and "://" in value:
        with local_copy(value) as path:
            yield path
    else:
        yield value


def upload(local: str, url: str) -> list[str]:
    """Copy a local file, or every file under a local folder, to `url`; return the URLs written."""
    if os.path.isfile(local):
        _put(local, url)
        return [url]
    written = []
    for folder, _, files in sorted(os.walk(local)):
        rel = os.path.relpath(folder, local)
        for name in sorted(files):
            dst = join(url, *([] if rel == "." else rel.split(os.sep)), name)
            _put(os.path.join(folder, name), dst)
            written.append(dst)
    return written


def _put(src: str, url: str) -> None:
    with open(src, "rb") as fi, atomic_write(url, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)


def read_json_glob(root: str, pattern: str) -> Iterator[tuple[str, dict]]:
    """(path, parsed object) for each JSON file matching `pattern` under `root`, sorted by path; a file that does
    not parse (a crash mid-write on a store without atomic rename) is passed over."""
    import json

    fs, base = fs_and_path(root)
    if not fs.exists(base):
        return
    for path in sorted(fs.glob(f"{base}/{pattern}")):
        try:
            with fs.open(path, "r") as f:
                found = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            log.warning("passing over unreadable %s (%s)", path, err)
            continue
        yield path, found


def arrow_filesystem(url: str):
    """(pyarrow filesystem, path) of a URL for Ray Train's `RunConfig(storage_filesystem=, storage_path=)`:
    (None, absolute path) for a local one, else fsspec's filesystem wrapped for pyarrow."""
    if not is_remote(url):
        return None, os.path.abspath(local_path(url))
    import pyarrow.fs

    fs, path = fs_and_path(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def warn_local_root_on_cluster(root: str, cluster: dict) -> None:
    """A local run root on a multi-node cluster: every node would write its own disk (fine on a shared mount)."""
    if cluster.get("multi_node") and is_local(root) and root not in _warned:
        _warned.add(root)
        log.warning(
            "run root %s is a local path but the Ray cluster has %d nodes: each node reads and writes its own disk "
            "there, so shards written on one node are missing on the others. Use storage every node sees for "
            "`root` (s3://bucket/prefix, gs://bucket/prefix, or a shared mount such as NFS).",
            root, cluster.get("nodes", 0))


def expand_urls(patterns: str | list[str]) -> list[str]:
    """The files that brace patterns and globs name (`pool/{00000..01287}.tar`, `s3://b/pool/*.tar`): each pattern
    brace-expanded, each part globbed where it has wildcards, else kept when the file exists; in the order given,
    sorted within a glob, each file once. URLs keep their scheme."""
    import braceexpand

    out: dict[str, None] = {}
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for part in braceexpand.braceexpand(pattern):
            fs, path = fs_and_path(part)
            scheme = part.split("://", 1)[0] + "://" if "://" in part and not is_local(part) else ""
            if any(c in path for c in "*?["):
                out.update(dict.fromkeys(scheme + p for p in sorted(fs.glob(path)) if not fs.isdir(p)))
            elif fs.exists(path):
                out[part] = None
    return list(out)
