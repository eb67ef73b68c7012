"""Webdataset sources: tar shards in img2dataset's layout (DataComp's pools too), each with the parquet img2dataset
writes beside it (`00000.tar` + `00000.parquet`). Each tar is one source shard; it is read once, through the one
capped tar reader, hashing its bytes on the way (its sha256 costs no second read)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.core.config import ConfigError
from pipeline.core.layout import file_stamp, fs_and_path, is_local, open_binary
from pipeline.core.shards import ReadReport, iter_samples
from pipeline.core.storage import expand_urls
from pipeline.ingest.config import WebdatasetSource
from pipeline.ingest.samples import HashingReader, ShardRows, SourceShard, fingerprint


def stamps(urls: list[str]) -> dict[str, dict | None]:
    """url -> its stamp (size, mtime, etag), None for a file that is not there; remote ones asked in parallel."""
    def one(url: str) -> dict | None:
        fs, path = fs_and_path(url)
        try:
            return file_stamp(fs.info(path))
        except FileNotFoundError:
            return None

    if all(is_local(u) for u in urls):
        return {u: one(u) for u in urls}
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(urls, pool.map(one, urls), strict=True))


def beside(url: str) -> str:
    """The parquet img2dataset writes beside a tar: `00000.tar` -> `00000.parquet`."""
    return (url[:-4] if url.endswith(".tar") else url) + ".parquet"


def source_urls(src: WebdatasetSource, where: str) -> list[str]:
    """The tars the source names, in order; ConfigError naming the key when it names none."""
    urls = expand_urls(src.shards)
    if not urls:
        raise ConfigError(f"{where}.shards: no file matches {src.shards!r}")
    return urls


def plan(src: WebdatasetSource, where: str) -> list[SourceShard]:
    """One source shard per tar, in the order the pattern names them (sorted within a glob)."""
    urls = source_urls(src, where)
    sides = [beside(u) for u in urls] if src.parquet else []
    found = stamps(urls + sides)
    out = []
    for i, url in enumerate(urls):
        side = sides[i] if src.parquet and found[sides[i]] is not None else None
        out.append(SourceShard(shard=f"{i:05d}", kind="webdataset", label=url, in_place=url,
                               stamp=fingerprint([url, found[url], side, found.get(side)]),
                               payload={"tar": url, "parquet": side}))
    return out


def side_metadata(url: str | None) -> tuple[dict[str, dict], dict]:
    """key -> the row of the parquet beside a tar (every column), and what reading it found."""
    if url is None:
        return {}, {}
    import pyarrow.parquet as pq

    with open_binary(url) as f:
        table = pq.read_table(f)
    if "key" not in table.column_names:
        return {}, {"parquet": posixpath.basename(url), "parquet_note": "no `key` column: not joined"}
    rows = {str(r["key"]): r for r in table.to_pylist()}
    return rows, {"parquet": posixpath.basename(url), "parquet_rows": len(rows)}


class TarReading:
    """Reads one source tar: yields its samples (for a copy) while `rows` judges each; afterwards `sha256` is the
    tar's checksum and `report` what the reader skipped."""

    def __init__(self, unit: SourceShard, rows: ShardRows):
        self.unit, self.rows = unit, rows
        self.report = ReadReport()
        self.sha256: str | None = None
        self.info: dict = {}

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        side, self.info = side_metadata(self.unit.payload["parquet"])
        joined = 0
        with open_binary(self.unit.payload["tar"]) as f:
            reader = HashingReader(f)
            for key, files in iter_samples(reader, self.report):
                extra = side.get(key)
                joined += extra is not None
                self.rows.add(key, files, extra)
                yield key, files
            self.sha256 = reader.finish()
        if side:
            self.info["parquet_rows_not_in_tar"] = len(side) - joined  # img2dataset lists failed downloads too
