"""Read a URL list (parquet, CSV, TSV, JSONL) into an Arrow table with a uid per row, checking columns first."""

from __future__ import annotations

import difflib
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import ConfigError
from pipeline.core.ids import uid_of
from pipeline.core.layout import fs_and_path

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def detect_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    for suffix, fmt in FORMATS.items():
        if path.endswith(suffix) or path.endswith(suffix + ".gz"):
            return fmt
    raise ConfigError(f"{path}: cannot tell the URL list's format from its name; set input_format "
                      f"(one of {', '.join(sorted(set(FORMATS.values())))})")


def _read_columns(path: str, fmt: str) -> list[str]:
    fs, p = fs_and_path(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(p, "rb") as f:
            return pq.read_schema(f).names
    return read_table(path, fmt).column_names


def read_table(path: str, fmt: str) -> pa.Table:
    fs, p = fs_and_path(path)
    if not fs.exists(p):
        raise ConfigError(f"{path}: URL list not found")
    with fs.open(p, "rb", compression="infer") as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(f)
        if fmt in ("csv", "tsv"):
            import pyarrow.csv as pcsv

            opts = pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
            return pcsv.read_csv(f, parse_options=opts)
        if fmt == "jsonl":
            import pyarrow.json as pjson

            return pjson.read_json(f)
    raise ConfigError(f"{path}: unknown URL list format {fmt!r}")


def check_columns(path: str, fmt: str, wanted: dict[str, str | None]) -> None:
    """Fail before any Ray work when a named column is missing: `wanted` maps the setting name to the column."""
    have = _read_columns(path, fmt)
    for setting, col in wanted.items():
        if col is not None and col not in have:
            close = difflib.get_close_matches(col, have, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"{path}: the URL list has no column {col!r} (named by {setting}); its columns are "
                f"{', '.join(have)}{hint}"
            )


def load_url_list(path: str, fmt: str, url_col: str, caption_col: str | None, extra_cols: list[str], *,
                  max_url_chars: int | None = None,
                  max_caption_chars: int | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Columns url, caption (if any), extras, uid. Rows without a URL, with a URL or caption over its length cap,
    and repeated URLs are dropped and counted under a reason (`missing_url`, `url_too_long`, ...)."""
    fmt = detect_format(path, fmt)
    check_columns(path, fmt, {"url_col": url_col, "caption_col": caption_col,
                              **{f"save_additional_columns[{i}]": c for i, c in enumerate(extra_cols)}})
    table = read_table(path, fmt)
    cols = {"url": pc.cast(table[url_col], pa.string())}
    if caption_col:
        cols["caption"] = pc.cast(table[caption_col], pa.string())
    for c in extra_cols:
        cols[c] = table[c]
    table = pa.table(cols)
    dropped: Counter[str] = Counter()
    urls = table["url"].to_pylist()
    captions = table["caption"].to_pylist() if caption_col else [None] * len(urls)
    keep, seen, uids = [], set(), []
    for i, (url, caption) in enumerate(zip(urls, captions, strict=True)):
        if url is None or not url.strip():
            dropped["missing_url"] += 1
            continue
        if max_url_chars is not None and len(url) > max_url_chars:
            dropped["url_too_long"] += 1
            continue
        if max_caption_chars is not None and caption is not None and len(caption) > max_caption_chars:
            dropped["caption_too_long"] += 1
            continue
        if url in seen:
            dropped["duplicate_url"] += 1  # one uid per URL: a repeated URL would be the same sample twice
            continue
        seen.add(url)
        keep.append(i)
        uids.append(uid_of(url))
    table = table.take(pa.array(keep, pa.int64())).append_column("uid", pa.array(uids, pa.string()))
    return table, dict(dropped)
