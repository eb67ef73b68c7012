"""A whole worker node lost mid-stage: on a real three-node Ray cluster (`ray start` head + two worker nodes on
loopback, each with its own temp dir), a worker node's raylet and every process under it is SIGKILLed while
download (on a local root and on an S3 root), score, caption and train-clip run; each stage finishes on the nodes
left with every sample exactly once, training resumes from its last checkpoint with as many workers as still fit,
and each says what it redid.

One module-scoped cluster serves every test; a test that kills a node starts a replacement first. The head has no
CPUs (as on large clusters), so every task, actor and training worker runs on a worker node that can be killed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from capfilt_testdata import capfilt_models, stage_cfg  # noqa: F401  (session fixture: tiny CoCa, judge)
from local_cluster import LocalCluster, finish, start_driver, wait_for

from pipeline.core.layout import Dataset
from training.engine.checkpoint import latest_checkpoint

POOL = 160
SHARD = 20
# Slow URLs (past the 1 s timeout) keep each download shard busy long enough for a node to die under it.
FAULTS = {"http_404": 0.02, "http_500": 0.0, "slow": 0.05, "truncated": 0.0, "not_image": 0.01, "oversized": 0.0,
          "opt_out": 0.0}
WORKERS = 2  # worker nodes besides the head


@pytest.fixture(scope="module")
def cluster():
    # A worker group that lost a node is often restarted before Ray has declared the node dead, at its old size;
    # that start then times out (Ray Train's default: 60 s) before a smaller one is tried.
    c = LocalCluster(cpus_per_node=2, head_cpus=0, node_death_s=6,
                     env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "25"}).start(WORKERS + 1)
    try:
        yield c
    finally:
        c.stop()


def kill_node_running(cluster: LocalCluster, name: str, proc, timeout: float = 180) -> int:
    """Wait until a worker node runs a process titled `name`, then kill that whole node; its index."""
    node = wait_for(lambda: cluster.worker_node_running(name), timeout, f"a worker node running {name}", proc)
    cluster.kill_node(node)
    return node


def rows(ds: Dataset, folder: str = "shards") -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in ds.shard_files(folder, "parquet")])


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("nodeloss")
    cfg = tmp / "cfg.yaml"
    base = {"name": "node-loss", "root": str(tmp / "run"),
            "synthetic": {"dir": str(tmp / "web"), "pool_size": POOL, "hq_size": 10, "test_size": 40,
                          "slow_seconds": 2.0, "faults": FAULTS},
            "stages": {"download": {"source": "synthetic", "output": "pool", "image_size": 32,
                                    "resize_mode": "center_crop", "number_sample_per_shard": SHARD,
                                    "thread_count": 2, "timeout": 1}}}
    cfg.write_text(yaml.safe_dump(base))
    return cfg, base


def set_stage(cfg: Path, base: dict, name: str, stage: dict) -> None:
    base["stages"][name] = stage
    cfg.write_text(yaml.safe_dump(base))


@pytest.fixture(scope="module")
def pool(cluster, run) -> tuple[Dataset, str]:
    """The download stage, with a worker node killed under a running shard task."""
    cfg, base = run
    cluster.ensure_nodes(WORKERS)
    proc = start_driver(cluster, cfg, "--stage", "download")
    kill_node_running(cluster, "ray::_run_and_mark", proc)
    return Dataset(base["root"], "pool"), finish(proc)


def test_download_survives_a_lost_node_with_every_sample_once(pool) -> None:
    ds, out = pool
    section = ds.manifest()["stages"]["download"]
    assert section["shards"]["failed"] == []
    assert section["shard_retry_reasons"].get("node_lost", 0) >= 1, (section, out[-3000:])
    uids = rows(ds).column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == POOL
    assert section["ok"] + sum(section["reasons"].values()) == POOL
    assert section["reasons"].get("timeout") == round(FAULTS["slow"] * POOL)
    assert "node_lost" in out  # the summary says what was redone


def test_download_to_an_s3_root_survives_a_lost_node(cluster, s3_bucket, tmp_path) -> None:
    """The same on a root in S3 (the moto server on loopback, whose endpoint every node's environment names):
    what a lost node left half uploaded is redone, every sample once."""
    from pipeline.core.layout import fs_and_path, join

    root = join(s3_bucket, "run")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "node-loss-s3", "root": root,
        "synthetic": {"dir": str(tmp_path / "web"), "pool_size": POOL // 2, "hq_size": 10, "test_size": 20,
                      "slow_seconds": 2.0, "faults": FAULTS},
        "stages": {"download": {"source": "synthetic", "output": "pool", "image_size": 32,
                                "resize_mode": "center_crop", "number_sample_per_shard": SHARD, "thread_count": 2,
                                "timeout": 1}}}))
    cluster.ensure_nodes(WORKERS)
    proc = start_driver(cluster, cfg, "--stage", "download")
    kill_node_running(cluster, "ray::_run_and_mark", proc)
    out = finish(proc)
    ds = Dataset(root, "pool")
    section = ds.manifest()["stages"]["download"]
    assert section["shards"]["failed"] == [] and section["shard_retry_reasons"].get("node_lost", 0) >= 1, out[-3000:]
    tables = []
    for url in ds.shard_files(ext="parquet"):
        fs, path = fs_and_path(url)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    uids = pa.concat_tables(tables).column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == POOL // 2
    assert section["ok"] + sum(section["reasons"].values()) == POOL // 2


def model_stage_survives(cluster, run, pool, name: str, stage: dict, folder: str,
                         actor: str) -> tuple[pa.Table, dict, str]:
    cfg, base = run
    ds, _ = pool
    cluster.ensure_nodes(WORKERS)
    set_stage(cfg, base, name, stage)
    proc = start_driver(cluster, cfg, "--stage", name)
    kill_node_running(cluster, f"ray::MapWorker(MapBatches({actor}))", proc)  # the model actor's node
    out = finish(proc)
    return rows(ds, folder), ds.manifest()["stages"][name], out


def ok_uids(ds: Dataset) -> set[str]:
    downloaded = rows(ds).to_pandas()
    return set(downloaded[downloaded.status == "success"].uid)


def test_score_survives_a_lost_node_with_every_uid_once(cluster, run, pool) -> None:
    stage = {"input": "pool", "model": {"name": "tiny-clip-vit"}, "batch_size": 8, "chunk_rows": 8}
    scored, section, out = model_stage_survives(cluster, run, pool, "score", stage, "signals", "DFNScorer")
    uids = scored.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) and set(uids) == ok_uids(pool[0])
    assert all(s is not None for s in scored.column("dfn_score").to_pylist())
    assert section["shards"]["failed"] == [], out[-3000:]
    assert len(section["nodes_lost"]) == 1 and "nodes lost" in out  # the summary says a node went mid-stage


def test_caption_survives_a_lost_node_with_every_uid_once(cluster, run, pool, capfilt_models) -> None:  # noqa: F811
    stage = {"kind": "caption", **stage_cfg(capfilt_models)}
    captions, section, out = model_stage_survives(cluster, run, pool, "caption", stage, "captions",
                                                 "CaptionAndJudge")
    uids = captions.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) and set(uids) == ok_uids(pool[0])
    assert section["shards"]["failed"] == [], out[-3000:]
    assert len(section["nodes_lost"]) == 1 and "nodes lost" in out


def test_training_resumes_on_the_nodes_left_with_fewer_workers(cluster, run, pool) -> None:
    cfg, base = run
    cluster.ensure_nodes(WORKERS)
    steps = 8
    set_stage(cfg, base, "train", {
        "kind": "train-clip", "input": "pool", "model": {"name": "tiny-sigmoid-vit"}, "objective": "siglip",
        "steps": steps, "log_every": 2, "checkpoint_every": 2, "seed": 3,
        "data": {"batch_size": 8, "loader_workers": 0, "shuffle_buffer": 16},
        # two workers, one per two-CPU worker node; a lost node leaves room for one, which min_workers allows
        "scaling": {"num_workers": 2, "min_workers": 1, "cpus_per_worker": 2, "torch_threads": 1,
                    "max_failures": 2},
        "eval": {"max_samples": 20}})
    root = Path(base["root"])
    proc = start_driver(cluster, cfg, "--stage", "train")
    ckpt = root / "train" / "checkpoints"
    # A complete checkpoint, not just its directory: a kill while step_2 is half written restarts from step 0.
    wait_for(lambda: ckpt.exists() and latest_checkpoint(str(ckpt)), 300, "the first complete checkpoint", proc)
    kill_node_running(cluster, "ray::RayTrainWorker", proc)
    out = finish(proc, timeout=600)
    record = json.loads((root / "train" / "train.json").read_text())
    assert record["step"] == steps, out[-3000:]
    assert len(record["resumes"]) == 1 and 2 <= record["resumes"][0]["step"] < steps
    assert record["resumes"][0]["world"] == record["world"] == 1
    assert "resumed" in out and "with 1 workers" in out

