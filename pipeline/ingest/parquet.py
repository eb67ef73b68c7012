"""Parquet and arrow sources: files with an image-bytes column and a caption column (a Hugging Face `datasets`
export: `to_parquet`, or the `.arrow` files of `save_to_disk`). An image cell is bytes, or a struct with `bytes`
(datasets' Image feature); a caption cell is a string or a list of candidate captions; every other column is kept
as metadata. A parquet file is cut into shards of `samples_per_shard` rows (read by row group); an arrow file is one
shard. Written as winnow shards (a copy by nature)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from pipeline.core.config import ConfigError
from pipeline.core.layout import fs_and_path, open_binary
from pipeline.core.storage import expand_urls
from pipeline.ingest.config import ParquetSource
from pipeline.ingest.samples import SourceShard, fingerprint
from pipeline.ingest.webdataset import stamps


def _is_parquet(url: str) -> bool:
    return not url.endswith((".arrow", ".feather", ".ipc"))


def _arrow_reader(f):  # noqa: ANN001, ANN202 - an open file; arrow's file format, else its stream format
    import pyarrow as pa

    try:
        return pa.ipc.open_file(f)
    except pa.ArrowInvalid:
        f.seek(0)
        return pa.ipc.open_stream(f)


def _schema_and_rows(url: str) -> tuple[list[str], int | None]:
    import pyarrow.parquet as pq

    with open_binary(url) as f:
        if _is_parquet(url):
            meta = pq.ParquetFile(f).metadata
            return meta.schema.to_arrow_schema().names, meta.num_rows
        return _arrow_reader(f).schema.names, None


def plan(src: ParquetSource, where: str, samples_per_shard: int) -> list[SourceShard]:
    urls = expand_urls(src.files)
    if not urls:
        raise ConfigError(f"{where}.files: no file matches {src.files!r}")
    found, out = stamps(urls), []
    for url in urls:
        try:
            names, rows = _schema_and_rows(url)
        except Exception as err:  # pyarrow raises several types on a file that is not parquet / arrow
            raise ConfigError(f"{where}.files: {url} is not a readable parquet or arrow file ({err})") from None
        explicit = {"image_col": src.image_col, "caption_col": src.caption_col, "url_col": src.url_col,
                    "uid_col": src.uid_col}
        for key, col in explicit.items():
            if col is not None and col not in names:
                raise ConfigError(f"{where}.{key}: {url} has no column {col!r} (its columns: {', '.join(names)})")
        chunks = [(0, None)] if rows is None else \
            [(i * samples_per_shard, samples_per_shard) for i in range(max(1, math.ceil(rows / samples_per_shard)))]
        for start, count in chunks:
            label = url if rows is None else f"{url} (rows {start}-{min(start + count, rows) - 1})"
            out.append(SourceShard(shard=f"{len(out):05d}", kind="parquet", label=label,
                                   stamp=fingerprint([url, found[url], start, count, src.model_dump()]),
                                   payload={"url": url, "start": start, "count": count}))
    return out


def _table(url: str, start: int, count: int | None):  # noqa: ANN202 - a pyarrow Table
    """The rows [start, start + count) of a parquet file (the row groups that hold them), or an arrow file."""
    import pyarrow.parquet as pq

    with open_binary(url) as f:
        if not _is_parquet(url):
            return _arrow_reader(f).read_all()
        pf = pq.ParquetFile(f)
        groups, first, at = [], None, 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if at + n > start and at < start + count:
                groups.append(i)
                first = at if first is None else first
            at += n
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
        return table.slice(start - (first or 0), count)


def _image(cell) -> bytes | None:  # noqa: ANN001 - bytes, a {bytes, path} struct, or null
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return bytes(cell) if isinstance(cell, bytes | bytearray | memoryview) else None


def parquet_samples(unit: SourceShard, src: ParquetSource) -> Iterator[tuple[str, dict[str, bytes], dict]]:
    """(row label, {ext: image bytes}, {captions, meta}) per row of the shard."""
    from pipeline.core.images import image_format

    p = unit.payload
    table = _table(p["url"], p["start"], p["count"])
    ext_of = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
    for i, row in enumerate(table.to_pylist()):
        data = _image(row.pop(src.image_col, None))
        value = row.pop(src.caption_col, None)
        caps = [c.strip() for c in (value if isinstance(value, list) else [value]) if isinstance(c, str) and c.strip()]
        meta = {**row, "source_file": fs_and_path(p["url"])[1].rsplit("/", 1)[-1], "source_row": p["start"] + i}
        ext = ext_of.get(image_format(data)[0] or "", "jpg") if data is not None else None
        yield f"row {p['start'] + i}", ({ext: data} if data is not None else {}), {"captions": caps, "meta": meta}
