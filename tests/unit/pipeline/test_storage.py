"""Storage helpers against an S3 server on loopback (moto): staging remote files locally, uploading, fresh
listings of objects other processes wrote, Ray Train's pyarrow view, and the local-root-on-a-cluster warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.fs
import pytest
import s3fs

from pipeline.core.layout import Dataset, fs_and_path, join, write_json_atomic
from pipeline.core.storage import arrow_filesystem, local_copy, local_if_url, upload, warn_local_root_on_cluster


def write(url: str, data: bytes) -> None:
    fs, path = fs_and_path(url)
    with fs.open(path, "wb") as f:
        f.write(data)


def test_local_copy_stages_a_remote_file_or_folder_and_removes_it_after(s3_bucket):
    write(join(s3_bucket, "m", "model.pt"), b"weights")
    write(join(s3_bucket, "ckpt", "step_1", "state.json"), b"{}")
    write(join(s3_bucket, "ckpt", "step_1", "sub", "rng.bin"), b"\x00\x01")
    with local_copy(join(s3_bucket, "m", "model.pt")) as path:
        assert Path(path).read_bytes() == b"weights" and Path(path).name == "model.pt"
    assert not os.path.exists(path)
    with local_copy(join(s3_bucket, "ckpt", "step_1")) as folder:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
    assert files == {"state.json": b"{}", "sub/rng.bin": b"\x00\x01"}
    assert not os.path.exists(folder)


@pytest.mark.parametrize("key", ["a/../../../escaped", "a/../../escaped", "./x", "a//b", "a\\..\\..\\escaped"])
def test_object_keys_cannot_place_a_copy_outside_its_folder(s3_bucket, tmp_path, monkeypatch, key):
    """An object store takes `ckpt/a/../../../escaped` as a key like any other; copying it down must not follow it."""
    import tempfile

    import boto3

    from pipeline.core.storage import UnsafeObjectKey

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=bucket, Key="ckpt/ok.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key=f"ckpt/{key}", Body=b"evil")
    staging = tmp_path / "stage" / "deeper"
    staging.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix="": str(staging))
    with pytest.raises(UnsafeObjectKey, match="outside"):
        with local_copy(join(s3_bucket, "ckpt")):
            pass
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []  # refused before anything was copied, inside the folder or out of it


def test_local_copy_of_a_local_path_is_the_path_itself(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    with local_copy(str(tmp_path / "a.bin")) as path:
        assert path == str(tmp_path / "a.bin")
    assert (tmp_path / "a.bin").exists()  # never deleted: it was not a copy


def test_upload_puts_every_file_of_a_folder_and_leaves_no_temporary_object(s3_bucket, tmp_path):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.1").write_bytes(b"e" * 3000)
    (tmp_path / "metrics.csv").write_text("step\n1\n")
    written = upload(str(tmp_path), join(s3_bucket, "run"))
    fs, base = fs_and_path(join(s3_bucket, "run"))
    assert sorted(p[len(base) + 1:] for p in fs.find(base)) == ["metrics.csv", "tb/events.1"]
    assert sorted(written) == [join(s3_bucket, "run", "metrics.csv"), join(s3_bucket, "run", "tb", "events.1")]
    assert fs.cat_file(f"{base}/tb/events.1") == b"e" * 3000


def test_a_marker_written_by_another_process_is_seen_at_once(s3_bucket):
    ds = Dataset(s3_bucket, "pool")
    ds.write_marker("00000", {"samples": 1})
    assert list(ds.done_shards()) == ["00000"]  # the driver has listed the folder once
    # another process (a Ray task) writes the next marker through its own client
    other = s3fs.S3FileSystem(skip_instance_cache=True)
    with other.open(fs_and_path(ds.marker("00001"))[1], "w") as f:
        f.write('{"samples": 2}')
    assert sorted(ds.done_shards()) == ["00000", "00001"]


def test_ray_trains_pyarrow_view_reads_what_fsspec_wrote(s3_bucket, tmp_path):
    write_json_atomic(join(s3_bucket, "train", "checkpoints", "step_1", "state.json"), {"step": 1})
    filesystem, path = arrow_filesystem(join(s3_bucket, "train"))
    assert isinstance(filesystem, pyarrow.fs.FileSystem) and path == s3_bucket.removeprefix("s3://") + "/train"
    with filesystem.open_input_stream(f"{path}/checkpoints/step_1/state.json") as f:
        assert b'"step": 1' in f.read()
    assert arrow_filesystem(str(tmp_path)) == (None, str(tmp_path))


def test_a_local_root_on_a_multi_node_cluster_is_warned_about_once(caplog, tmp_path):
    root = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="pipeline.core.storage"):
        warn_local_root_on_cluster(root, {"multi_node": False, "nodes": 1})
        warn_local_root_on_cluster("s3://bucket/run", {"multi_node": True, "nodes": 3})
        assert not caplog.records
        warn_local_root_on_cluster(root, {"multi_node": True, "nodes": 3})
        warn_local_root_on_cluster(root, {"multi_node": True, "nodes": 3})
    assert len(caplog.records) == 1
    assert root in caplog.text and "3 nodes" in caplog.text and "s3://" in caplog.text


def test_a_remote_root_needs_an_absolute_local_synthetic_web():
    from pipeline.core.config import ConfigError
    from pipeline.pipeline_config import parse_pipeline_config

    cfg = parse_pipeline_config({"root": "s3://bucket/run", "synthetic": {"dir": "web"}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"synthetic\.dir: 'web' would resolve under the remote root"):
        cfg.synthetic_dir()
    cfg = parse_pipeline_config({"root": "s3://bucket/run", "synthetic": {"dir": "/tmp/web"}}, "c.yaml")
    assert cfg.synthetic_dir() == "/tmp/web"


def test_local_if_url_stages_urls_and_passes_tags_and_paths_through(s3_bucket):
    write(join(s3_bucket, "model.pt"), b"w")
    for value in (None, "openai", "hf-hub:org/repo", "/data/model.pt"):
        with local_if_url(value) as got:
            assert got == value
    with local_if_url(join(s3_bucket, "model.pt")) as path:
        assert Path(path).read_bytes() == b"w"
    assert not os.path.exists(path)
