"""Two fresh runs of one config give the same bytes at every stage: download -> a few training steps on the pool ->
score with that model -> filter. img2dataset's threads finish requests in a different order each run; the download
stage puts each shard in key order, so the pool, the model trained on it, its scores and the kept set all repeat."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from curation_testdata import small_pipeline

from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.core.shards import read_samples
from pipeline.pipeline_config import load_pipeline_config

# Faults on, `slow` well past the timeout: which URLs fail must not depend on the machine's load.
WEB = {"pool_size": 240, "hq_size": 0, "test_size": 0, "slow_seconds": 3.0,
       "noise": {"mismatched_caption": 0.3, "generic_caption": 0.1, "junk_image": 0.1, "exact_duplicate": 0.05}}


def run_once(tmp: Path, name: str) -> Path:
    root = tmp / name
    body = {"name": "repro", **small_pipeline(root, WEB, eval_test_set=False)}
    body["stages"]["filter"] = {"input": "pool", "recipe": "dfn_synthetic"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))  # stage order matters
    run_pipeline(load_pipeline_config(path))
    return root


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.timeout(240)
def test_two_fresh_runs_give_identical_shards_scores_and_selection(ray_local, tmp_path):
    a, b = run_once(tmp_path, "a"), run_once(tmp_path, "b")
    pool_a, pool_b = Dataset(str(a), "pool"), Dataset(str(b), "pool")
    tars = pool_a.shard_files(ext="tar")
    assert len(tars) == 3
    for path in tars:
        keys = [key for key, _ in read_samples(path)]
        assert keys == sorted(keys) and len(keys) > 60  # key order, whatever order the requests finished in
        twin = path.replace(str(a), str(b), 1)
        assert sha(path) == sha(twin), f"{path}: the two runs' shards differ"
        assert pq.read_table(path[:-4] + ".parquet").equals(pq.read_table(twin[:-4] + ".parquet"))
    assert sha(str(a / "train_filter" / "model.pt")) == sha(str(b / "train_filter" / "model.pt"))

    signals = [pq.read_table(ds.sub("signals")).sort_by("uid") for ds in (pool_a, pool_b)]
    assert signals[0].num_rows > 200
    assert signals[0].column("dfn_score").equals(signals[1].column("dfn_score"))  # bit for bit, not approximately
    kept = [pq.read_table(ds.sub("selection", "dfn_synthetic.parquet")).sort_by("uid") for ds in (pool_a, pool_b)]
    assert kept[0].equals(kept[1])
    assert 0 < sum(kept[0].column("kept").to_pylist()) < kept[0].num_rows
