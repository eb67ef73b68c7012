"""Dataset names are one folder under the run root, and no stage writes over its own input: both are config errors
naming the key, raised before any work."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from curation_testdata import sample, write_pool

from pipeline.cli.run import run_pipeline
from pipeline.core.config import ConfigError
from pipeline.pipeline_config import load_pipeline_config


def _config(tmp_path: Path, stages: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "root"), "stages": stages}))
    return path


@pytest.mark.parametrize("name", ["../escape", "..", "/etc", "a/b", "a\\b", ".hidden", "", "x" * 200])
@pytest.mark.parametrize("key", ["input", "output"])
def test_unsafe_dataset_names_are_config_errors_naming_the_key(tmp_path: Path, name: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"c\.yaml.*stages\.reshard\.{key}.*not a dataset name"):
        load_pipeline_config(_config(tmp_path, {"reshard": {"input": "pool", "recipe": "r", key: name}}))


def test_a_stage_name_that_is_its_default_output_is_checked_too(tmp_path: Path) -> None:
    cfg = load_pipeline_config(_config(tmp_path, {"../../escape": {"kind": "download", "url_list": "u.parquet"}}))
    with pytest.raises(ConfigError, match=r"stages\.\.\./\.\./escape.*not a dataset name"):
        run_pipeline(cfg)
    assert not (tmp_path / "escape").exists()


def test_a_stage_whose_output_is_its_input_is_refused_before_any_work(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "root", "pool", [[sample(i) for i in range(4)]])
    rows = pq.read_table(pool.shard_file("00000", "parquet")).to_pylist()
    (Path(pool.path) / "selection").mkdir()
    pq.write_table(pa.Table.from_pylist([{"uid": r["uid"], "shard": "00000", "key": r["key"], "kept": True}
                                         for r in rows]), Path(pool.path) / "selection" / "r.parquet")
    before = pool.done_shards()
    cfg = load_pipeline_config(_config(tmp_path, {"reshard": {"input": "pool", "recipe": "r", "output": "pool"}}))
    with pytest.raises(ConfigError, match=r"stages\.reshard: output 'pool' is the stage's own input"):
        run_pipeline(cfg)
    assert pool.done_shards() == before  # the pool's markers are untouched
