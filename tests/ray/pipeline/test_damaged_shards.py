"""A shard damaged on disk after it was written: detected by checksum when read, reported, rebuilt by a rerun."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli.run import run_pipeline
from pipeline.core.errors import DamagedShards
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

NO_FAULTS = {k: 0.0 for k in ("http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out")}


def test_damaged_download_shard_is_reported_by_score_and_rebuilt_by_download(ray_local, tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "root": str(tmp_path / "run"),
        "synthetic": {"dir": str(tmp_path / "web"), "pool_size": 250, "hq_size": 5, "test_size": 10,
                      "faults": NO_FAULTS},
        "stages": {
            "download": {"source": "synthetic", "output": "pool", "image_size": 32, "resize_mode": "center_crop",
                         "number_sample_per_shard": 50, "thread_count": 8},
            "score": {"input": "pool"},
        }}))
    cfg = load_pipeline_config(cfg_path)
    run_pipeline(cfg, "download")
    ds = Dataset(cfg.root, "pool")
    shards = ds.root + "/pool/shards"
    assert ds.manifest()["stages"]["download"]["checksums"]["00001"]["shards/00001.tar"]

    flipped = Path(shards, "00001.tar")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    flipped.write_bytes(bytes(data))
    cut = Path(shards, "00003.tar")
    cut.write_bytes(cut.read_bytes()[:1000])

    with pytest.raises(DamagedShards) as err:
        run_pipeline(cfg, "score")
    msg = str(err.value)
    assert "00001: shards/00001.tar: sha256 differs" in msg and "00003: shards/00003.tar: size 1000" in msg
    assert "--stage download" in msg
    assert not (Path(cfg.root) / "pool" / "signals").exists()  # nothing was half-scored

    again = run_pipeline(cfg, "download")["download"]
    assert again["shards"]["skipped_already_done"] == 3 and again["shards"]["done"] == 5
    assert ds.verify_shard(ds.done_shards()["00001"]) == [] and ds.verify_shard(ds.done_shards()["00003"]) == []

    scored = run_pipeline(cfg, "score")["score"]
    signals = pa.concat_tables([pq.read_table(p) for p in ds.shard_files("signals", "parquet")])
    uids = signals.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 250 == scored["samples"]
