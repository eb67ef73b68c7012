"""Against a real two-node Ray cluster (`ray start` head + worker on loopback): survive a killed task worker, a
killed model actor, a killed training worker and a killed driver. (Jobs on such a cluster: test_jobs_on_cluster.py;
a whole node lost: test_node_loss.py.)"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from local_cluster import finish, kill_one, start_driver, wait_for

from pipeline.core.layout import Dataset
from training.engine.checkpoint import latest_checkpoint

POOL = 300
# A few slow URLs (past the 1 s timeout) keep each download shard busy long enough to be killed mid-shard.
FAULTS = {"http_404": 0.02, "http_500": 0.0, "slow": 0.04, "truncated": 0.0, "not_image": 0.01, "oversized": 0.0,
          "opt_out": 0.0}


def write_config(tmp: Path, stages: dict) -> Path:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cluster-test", "root": str(tmp / "run"),
        "synthetic": {"dir": str(tmp / "web"), "pool_size": POOL, "hq_size": 10, "test_size": 60,
                      "slow_seconds": 2.0, "faults": FAULTS},
        "stages": stages}))
    return path


DOWNLOAD = {"source": "synthetic", "output": "pool", "image_size": 32, "resize_mode": "center_crop",
            "number_sample_per_shard": 50, "thread_count": 4, "timeout": 1}


def rows(ds: Dataset, folder: str = "shards") -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in ds.shard_files(folder, "parquet")])


@pytest.fixture(scope="module")
def pool(cluster, tmp_path_factory) -> tuple[Path, Dataset]:
    """The download stage on the cluster, with one task worker SIGKILLed mid-shard."""
    tmp = tmp_path_factory.mktemp("pool")
    cfg = write_config(tmp, {"download": DOWNLOAD, "score": {"input": "pool", "model": {"name": "tiny-clip-vit"},
                                                             "batch_size": 8}})
    proc = start_driver(cluster, cfg, "--stage", "download")
    tmp_dir = tmp / "run" / "pool" / "_tmp"
    wait_for(lambda: tmp_dir.exists() and any(tmp_dir.iterdir()), 120, "a shard in progress", proc)
    kill_one(cluster, "ray::_run_and_mark")
    finish(proc)
    return cfg, Dataset(str(tmp / "run"), "pool")


def test_killed_download_worker_is_retried_and_every_sample_is_there_once(pool) -> None:
    _, ds = pool
    section = ds.manifest()["stages"]["download"]
    assert section["shards"]["retries_used"] >= 1 and section["shards"]["failed"] == []
    table = rows(ds)
    uids = table.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == POOL
    assert section["ok"] + sum(section["reasons"].values()) == POOL
    assert section["reasons"].get("timeout") == round(FAULTS["slow"] * POOL)


def test_killed_model_actor_is_replaced_and_every_uid_is_scored_once(cluster, pool) -> None:
    cfg, ds = pool
    proc = start_driver(cluster, cfg, "--stage", "score")
    kill_one(cluster, "ray::MapWorker(MapBatches(DFNScorer))")  # the scorer (the timed wrapper carries its name)
    finish(proc)
    scored = rows(ds, "signals")
    uids = scored.column("uid").to_pylist()
    downloaded = rows(ds).to_pandas()
    assert len(uids) == len(set(uids)) == int((downloaded.status == "success").sum())
    assert set(uids) == set(downloaded[downloaded.status == "success"].uid)
    assert all(s is not None for s in scored.column("dfn_score").to_pylist())


def train_stage(steps: int, workers: int = 1) -> dict:
    return {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-sigmoid-vit"}, "objective": "siglip",
            "steps": steps, "log_every": 4, "checkpoint_every": 8, "seed": 3,
            "data": {"batch_size": 32, "loader_workers": 0, "shuffle_buffer": 64},
            "scaling": {"num_workers": workers, "cpus_per_worker": 1, "max_failures": 2},
            "eval": {"max_samples": 60}}


def test_killed_training_worker_resumes_and_ends_like_an_uninterrupted_run(cluster, pool) -> None:
    cfg, _ = pool
    base = yaml.safe_load(cfg.read_text())
    # the uninterrupted reference trains in the driver: the same seed, data order and steps as one Ray Train worker
    base["stages"] = {"train_a": train_stage(32, workers=0), "train_b": train_stage(32)}
    cfg.write_text(yaml.safe_dump(base))
    root = Path(base["root"])

    finish(start_driver(cluster, cfg, "--stage", "train_a"))
    proc = start_driver(cluster, cfg, "--stage", "train_b")
    ckpt = root / "train_b" / "checkpoints"
    # A complete checkpoint, not just its directory: a kill while step_8 is half written restarts from step 0.
    wait_for(lambda: ckpt.exists() and latest_checkpoint(str(ckpt)), 240, "the first complete checkpoint", proc)
    kill_one(cluster, "ray::RayTrainWorker")
    finish(proc)

    a = json.loads((root / "train_a" / "train.json").read_text())
    b = json.loads((root / "train_b" / "train.json").read_text())
    assert a["step"] == b["step"] == 32 and b["samples_seen"] == 32 * 32
    assert not a["resumed_from"] and len(b["resumed_from"]) == 1 and 8 <= b["resumed_from"][0] < 32
    # Same final metrics within tolerance (a resumed stream draws different samples after the restart).
    assert abs(a["metrics"]["loss"] - b["metrics"]["loss"]) < 0.25 * a["metrics"]["loss"]
    za, zb = a["eval"]["zeroshot"]["top1"], b["eval"]["zeroshot"]["top1"]
    assert abs(za - zb) <= 0.15, (za, zb)
    with open(root / "train_b" / "metrics.csv") as f:  # one row per logged step: the resumed run continued the log
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(4, 33, 4))


def test_killed_driver_then_same_command_continues(cluster, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"download": {**DOWNLOAD, "processes": 1}})
    proc = start_driver(cluster, cfg)
    done = tmp_path / "run" / "pool" / "shards" / "_done"
    wait_for(lambda: done.exists() and len(list(done.iterdir())) >= 2, 120, "two finished shards", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ds = Dataset(str(tmp_path / "run"), "pool")
    before = len(ds.done_shards())
    assert 2 <= before < POOL // 50

    out = finish(start_driver(cluster, cfg))
    assert f"({before} already done" in out or f"({before + 1} already done" in out  # a shard may finish after kill
    uids = rows(ds).column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == POOL
