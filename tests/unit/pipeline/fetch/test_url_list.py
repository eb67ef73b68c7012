"""URL lists in every format; a missing column is named before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import ConfigError
from pipeline.core.ids import uid_of
from pipeline.fetch.url_list import load_url_list

ROWS = [{"link": f"http://h.invalid/{i}.jpg", "text": f"cap {i}", "extra": i} for i in range(5)]


def _write(tmp_path: Path, fmt: str, rows: list[dict]) -> str:
    p = tmp_path / f"urls.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), p)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        p.write_text(sep.join(rows[0]) + "\n" + "\n".join(sep.join(str(v) for v in r.values()) for r in rows))
    else:
        p.write_text("\n".join(json.dumps(r) for r in rows))
    return str(p)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_formats_give_the_same_table(tmp_path: Path, fmt: str) -> None:
    table, dropped = load_url_list(_write(tmp_path, fmt, ROWS), "auto", "link", "text", ["extra"])
    assert table.column_names == ["url", "caption", "extra", "uid"]
    assert table["uid"].to_pylist() == [uid_of(r["link"]) for r in ROWS]
    assert table["caption"].to_pylist() == [r["text"] for r in ROWS]
    assert dropped == {}


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "parquet", ROWS)
    with pytest.raises(ConfigError, match=r"urls\.parquet: the URL list has no column 'url' \(named by url_col\)"):
        load_url_list(path, "auto", "url", "text", [])
    with pytest.raises(ConfigError, match=r"no column 'txt'.*did you mean 'text'"):
        load_url_list(path, "auto", "link", "txt", [])


def test_repeated_and_empty_urls_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [*ROWS, ROWS[0], {"link": "", "text": "x", "extra": 9}]
    table, dropped = load_url_list(_write(tmp_path, "parquet", rows), "auto", "link", "text", [])
    assert table.num_rows == len(ROWS)
    assert dropped == {"duplicate_url": 1, "missing_url": 1}
    assert len(set(table["uid"].to_pylist())) == table.num_rows


def test_overlong_urls_and_captions_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [*ROWS, {"link": "http://h.invalid/" + "a" * 5000, "text": "ok", "extra": 7},
            {"link": "http://h.invalid/long-caption.jpg", "text": "word " * 2000, "extra": 8}]
    table, dropped = load_url_list(_write(tmp_path, "parquet", rows), "auto", "link", "text", [],
                                   max_url_chars=4096, max_caption_chars=4096)
    assert table["url"].to_pylist() == [r["link"] for r in ROWS]
    assert dropped == {"url_too_long": 1, "caption_too_long": 1}
