"""One download shard in this process (img2dataset, no Ray): what it leaves behind in a reused worker, and that its
files reach the disk before the marker that vouches for them."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_web import HostileWeb

from pipeline.core.layout import Dataset
from pipeline.execution.shard_tasks import ShardJob, _run_and_mark
from pipeline.fetch.net_guard import GuardPolicy
from pipeline.stages.download import DownloadConfig, DownloadShard, plan_input_shards


@pytest.fixture()
def shard_work(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")  # what a download task's worker gets
    with HostileWeb() as web, HostileWeb() as other:
        urls = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [web.url(f"/img/{i}.jpg") for i in range(4)], "caption": list("abcd")}), urls)
        cfg = DownloadConfig(url_list=str(urls), image_size=16, thread_count=2, timeout=2, url_deadline=10)
        ds = Dataset(str(tmp_path / "root"), "pool")
        plan = plan_input_shards(ds, cfg, str(urls))
        settings = cfg.model_dump(include={
            "image_size", "resize_mode", "resize_only_if_bigger", "upscale_interpolation", "downscale_interpolation",
            "encode_format", "encode_quality", "skip_reencode", "min_image_size", "max_aspect_ratio",
            "number_sample_per_shard", "thread_count", "timeout", "retries", "extract_exif", "compute_hash",
            "user_agent_token", "disallowed_header_directives"})
        policy = GuardPolicy.from_config(cfg.guard, extra_allow=[f"127.0.0.1:{web.port}"], url_deadline=10)
        yield DownloadShard(ds.root, ds.name, settings, plan["columns"], policy, cfg.guard.max_pixels), ds, other


def test_the_guard_is_gone_once_the_shard_is_done(shard_work) -> None:
    work, ds, other = shard_work
    before = urllib.request._opener
    record = _run_and_mark(work, ShardJob("00000"), ds.root, ds.name, "shards")
    assert record["ok"] == 4
    assert urllib.request._opener is before
    # another task in the same worker process reaches a loopback server the download was not allowed to
    assert urllib.request.urlopen(other.url("/img/1.jpg"), timeout=5).status == 200


def test_shard_files_are_on_disk_before_their_marker(shard_work, monkeypatch) -> None:
    work, ds, _ = shard_work
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _run_and_mark(work, ShardJob("00000"), ds.root, ds.name, "shards")
    shards = os.path.join(ds.path, "shards")
    marker = next(i for i, p in enumerate(synced) if os.path.dirname(p) == os.path.join(shards, "_done"))
    # each file's data (fsynced in the temporary folder, then renamed), then the folder holding the final names,
    # all before the marker; then the marker's own folder
    for name in ("00000.tar", "00000.meta.parquet", "00000_stats.json"):
        assert any(p.endswith("/" + name) for p in synced[:marker]), (name, synced)
    assert shards in synced[:marker]
    assert os.path.join(shards, "_done") in synced[marker:]
