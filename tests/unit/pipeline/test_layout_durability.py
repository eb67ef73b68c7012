"""Files are on disk before the rename that makes them visible, and the rename before whatever follows."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.layout import Dataset


def test_a_marker_is_fsynced_then_renamed_then_its_folder_fsynced(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs) -> None:  # noqa: ANN001
        events.append(("rename", str(dst)))
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    ds = Dataset(str(tmp_path), "pool")
    ds.write_marker("00000", {"samples": 1})
    marker = os.path.join(ds.path, "shards", "_done", "00000")
    kinds = [(kind, os.path.basename(path) if kind == "fsync" else path) for kind, path in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith("00000.tmp-")  # the data, under its temporary name
    assert kinds[1] == ("rename", marker)
    assert kinds[2] == ("fsync", "_done")  # the folder entry of the final name
