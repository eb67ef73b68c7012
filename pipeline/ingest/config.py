"""What an ingest reads: webdataset shards (img2dataset's / DataComp's layout), an image folder with captions, or
parquet / arrow files with image bytes (a Hugging Face `datasets` export). One model per source kind, chosen by
`kind:`."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.core.config import StrictModel


def _absolute(value: str | list[str] | None):  # noqa: ANN202 - what it was given
    """Local paths resolved against the directory winnow was started in, as the run root is: Ray workers read
    them from their own working directories."""
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return value if value is None or "://" in value or os.path.isabs(value) else os.path.abspath(value)


Patterns = Annotated[str | list[str], AfterValidator(_absolute)]
Location = Annotated[str, AfterValidator(_absolute)]


class WebdatasetSource(StrictModel):
    """`{key}.jpg/.txt/.json` tar shards, read in place by default (their tars are never written)."""

    kind: Literal["webdataset"]
    shards: Patterns = Field(description="the tars: a glob or brace pattern (`pool/{00000..01287}.tar`, "
                                         "`s3://bucket/pool/*.tar`), local or any fsspec URL; or a list of them")
    parquet: bool = Field(True, description="read `<shard>.parquet` beside each tar where there is one (img2dataset "
                                            "and DataComp write it): its columns are kept as metadata, by key")


class TableColumns(StrictModel):
    """Which columns of a captions table or a parquet file say what."""

    caption_col: str = Field("caption", description="the caption: a string, or a list of candidate captions")
    url_col: str | None = Field(None, description="a URL column (uid = its MD5, as a download's); default: `url` "
                                                  "when there is one")
    uid_col: str | None = Field(None, description="a 128-bit hex uid column (kept as the uid); default: `uid` when "
                                                  "there is one")


class FolderSource(TableColumns):
    """Image files under a folder (searched recursively), captioned by a `.txt` beside each image or by a table.
    Written as winnow shards: there is no tar to read in place."""

    kind: Literal["folder"]
    path: Location = Field(description="the image folder, local or any fsspec URL")
    captions: Location | None = Field(
        None, description="a captions table mapping file names to captions: CSV, JSONL (one row per caption, or a "
                          "list per row) or a COCO captions JSON (`images` + `annotations`); default: a `.txt` beside "
                          "each image (one caption per line)")
    file_col: str = Field("file_name", description="the table's file-name column: a path below `path`, or a bare "
                                                   "name when it is unique in the folder")


class ParquetSource(TableColumns):
    """Parquet or arrow files with an image-bytes column and a caption column. Written as winnow shards."""

    kind: Literal["parquet"]
    files: Patterns = Field(description="the .parquet / .arrow files: a glob or brace pattern, or a list of them")
    image_col: str = Field("image", description="image bytes, or a struct with `bytes` (datasets' Image feature)")


SourceConfig = Annotated[WebdatasetSource | FolderSource | ParquetSource, Field(discriminator="kind")]
KINDS = ("webdataset", "folder", "parquet")

# How an ingest holds its shards, for summaries and the report
MODES = {"in_place": "read in place (the source tars; no image byte copied)", "copy": "copied into the dataset",
         "written": "written as winnow shards (a folder or parquet source has no tars to read in place: a copy by "
                    "nature)"}
