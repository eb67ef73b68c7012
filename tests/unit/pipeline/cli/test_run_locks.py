"""A `winnow run` on datasets another run is using stops before touching them, naming the other run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from lock_holder import hold_in_another_process

from pipeline.cli.run import run_pipeline
from pipeline.core.locks import DatasetLocked
from pipeline.pipeline_config import load_pipeline_config


def test_a_run_on_a_dataset_in_use_stops_before_any_work(tmp_path: Path) -> None:
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), tmp_path / "urls.parquet")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"root": str(tmp_path / "root"), "stages": {
        "download": {"url_list": str(tmp_path / "urls.parquet"), "output": "pool"}}}))
    other_runs_shard = tmp_path / "root" / "pool" / "_tmp" / "00000-5e1f0a2b"  # the other run, mid-shard
    other_runs_shard.mkdir(parents=True)
    holder = hold_in_another_process(str(tmp_path / "root" / "pool"), 60)
    try:
        with pytest.raises(DatasetLocked, match=rf"pool is in use by another winnow run \(pid {holder.pid} "):
            run_pipeline(load_pipeline_config(cfg_path), "download")
    finally:
        holder.kill()
        holder.wait()
    assert other_runs_shard.exists()  # its temporary folder is left alone
    assert not (tmp_path / "root" / "pool" / "_inputs").exists()
