"""Ingesting one source shard (the work of one Ray task): read it through the one capped reader, judge every sample,
write winnow's parquet for it and, unless the shard is read in place, its tar; return the record the runner writes
as its `_done` marker.

Read in place (a webdataset source without `copy`), the marker's tar entry is the source's URL, stamp (size, mtime,
etag) and sha256 (`pipeline.core.layout.source_record`): every reader finds the tar there, and a source that changed
since is reported instead of read. Nothing of the source is written; only the parquet and the marker are winnow's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path, source_record
from pipeline.core.shards import write_tar
from pipeline.execution.shard_tasks import ShardJob
from pipeline.ingest.config import FolderSource, ParquetSource, WebdatasetSource
from pipeline.ingest.samples import ShardRows, SourceShard, with_uid, written_sample


@dataclass
class IngestShard:
    """The runner's work function: one source shard in, one dataset shard (parquet, tar unless in place) out."""

    root: str
    name: str
    source: WebdatasetSource | FolderSource | ParquetSource
    copy: bool
    max_pixels: int
    settings: str  # hash of what shapes the output besides the source (a marker with another is redone)
    key_digits: int = 4

    @property
    def mode(self) -> str:
        return "written" if self.source.kind != "webdataset" else "copy" if self.copy else "in_place"

    def __call__(self, job: ShardJob) -> dict:
        unit: SourceShard = job.payload
        ds = Dataset(self.root, self.name)
        rows = ShardRows(unit.shard, self.max_pixels)
        files: dict[str, dict] = {}
        skipped: dict[str, int] = {}
        info: dict = {}
        tar_url = ds.shard_file(unit.shard, "tar")
        if unit.kind == "webdataset":
            from pipeline.ingest.webdataset import TarReading

            reading = TarReading(unit, rows)
            if self.copy:
                write_tar(tar_url, reading)
                files[f"shards/{unit.shard}.tar"] = file_record(*fs_and_path(tar_url))
            else:
                entry = source_record(unit.in_place)  # stamped before the read: a change during it shows later
                for _ in reading:
                    pass
                files[f"shards/{unit.shard}.tar"] = {**entry, "sha256": reading.sha256}
            skipped, info = dict(reading.report.skipped), {**reading.info, "read_error": reading.report.error}
        else:
            write_tar(tar_url, self.written(unit, rows, skipped))
            files[f"shards/{unit.shard}.tar"] = file_record(*fs_and_path(tar_url))
        pq_url = ds.shard_file(unit.shard, "parquet")
        import pyarrow.parquet as pq

        with atomic_write(pq_url, "wb") as f:
            pq.write_table(rows.table(), f)
        files[f"shards/{unit.shard}.parquet"] = file_record(*fs_and_path(pq_url))
        return {**rows.record(), "files": dict(sorted(files.items())), "mode": self.mode, "stamp": unit.stamp,
                "settings": self.settings, "source": {"kind": unit.kind, "label": unit.label},
                "members_skipped": dict(sorted(skipped.items())), **info}

    def written(self, unit: SourceShard, rows: ShardRows, skipped: dict) -> Iterator[tuple[str, dict[str, bytes]]]:
        """The samples of a folder or parquet shard, in the download stage's format, keyed `<shard><index>`."""
        if unit.kind == "folder":
            from pipeline.ingest.folder import folder_samples

            samples = folder_samples(unit, skipped)
        else:
            from pipeline.ingest.parquet import parquet_samples

            samples = parquet_samples(unit, self.source)
        for i, (label, image, extra) in enumerate(samples):
            key = f"{unit.shard}{i:0{self.key_digits}d}"
            meta = {**extra["meta"], "file_name": label} if unit.kind == "folder" else extra["meta"]
            files = written_sample(image, extra["captions"], meta, self.source.url_col, self.source.uid_col)
            row = rows.add(key, files)
            yield key, with_uid(files, key, row["uid"])
