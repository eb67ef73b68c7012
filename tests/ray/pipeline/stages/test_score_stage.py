"""The score stage on Ray Data: one signals file per shard, bad input as rows, resume after a kill, model changes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from curation_testdata import TINY_MODEL, Sample, add_hostile_members, mark, sample, tiny_model_files, write_pool
from stage_kill import kill_after_first_shard

from pipeline.pipeline_config import parse_pipeline_config
from pipeline.stages import score
from pipeline.stages.context import StageContext


def score_ctx(root: str, model: dict | None, **extra) -> tuple[StageContext, score.ScoreConfig]:
    stage = {"input": "pool", "model": model, "batch_size": 8, "chunk_rows": 8, **extra}
    cfg = parse_pipeline_config({"root": root, "stages": {"score": stage}}, "test.yaml")
    return StageContext(pipeline=cfg, stage="score"), cfg.stages["score"]


def all_uids(ds) -> list[str]:
    return [u for s in sorted(ds.done_shards("signals"))
            for u in pq.read_table(ds.shard_file(s, "parquet", "signals")).column("uid").to_pylist()]


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    cfg, ckpt = tiny_model_files(tmp_path_factory.mktemp("tiny_model_score"))
    return {"name": TINY_MODEL, "pretrained": ckpt, "config_file": cfg}


def test_score_signals_then_model_rescore_and_skip(ray_local, tmp_path, tiny_spec):
    shards = [[sample(10 * s + i) for i in range(10)] for s in range(3)]
    shards[1] += [Sample(b"\xff\xd8 not really a jpeg", "a broken image of a cat", "http://web.test/broken.jpg"),
                  Sample(None, "a sample without an image", "http://web.test/noimage.jpg")]
    shards.append([])  # an empty shard still gets (empty) signals and a marker
    ds = write_pool(tmp_path, "pool", shards)
    hostile = add_hostile_members(ds.shard_file("00002", "tar"))
    mark(ds, "00002", 10)

    # 1) signals only: no actors, no embeddings, no dfn_score column
    ctx, cfg = score_ctx(str(tmp_path), None)
    res = score.run(ctx, cfg)
    assert res["samples"] == 32 and res["ok"] == 30
    t = pq.read_table(ds.shard_file("00001", "parquet", "signals"))
    assert "dfn_score" not in t.column_names and not os.path.exists(ds.sub("embeddings"))
    rows = {r["uid"]: r for r in t.to_pylist()}
    broken = rows[Sample(None, "", "http://web.test/broken.jpg").uid]
    assert not broken["decodable"] and broken["decode_error"] and broken["sha256"]
    assert rows[Sample(None, "", "http://web.test/noimage.jpg").uid]["decode_error"].startswith("missing")
    marker = ds.done_shards("signals")["00002"]
    assert {k.split(":", 1)[1]: v for k, v in marker["reasons"].items() if k.startswith("member:")} == hostile
    assert ds.done_shards("signals")["00003"]["samples"] == 0
    assert sorted(all_uids(ds)) == sorted(s.uid for sh in shards for s in sh)

    # 2) with a model: every shard is rescored (the model changed), dfn_score and aligned embeddings appear
    ctx, cfg = score_ctx(str(tmp_path), tiny_spec)
    res = score.run(ctx, cfg)
    assert res["shards"]["skipped_already_done"] == 0 and res["samples"] == 32
    for s in ("00000", "00001", "00002"):
        t = pq.read_table(ds.shard_file(s, "parquet", "signals"))
        emb = np.load(ds.shard_file(s, "npy", "embeddings"))
        assert emb.dtype == np.float16 and emb.shape == (t.num_rows, 64)
        keys = t.column("key").to_pylist()
        assert keys == sorted(keys)
        ok = np.array(t.column("decodable").to_pylist())
        score_col = np.array([np.nan if v is None else v for v in t.column("dfn_score").to_pylist()])
        assert np.isfinite(score_col[ok]).all() and np.isnan(score_col[~ok]).all()
        assert np.allclose(np.linalg.norm(emb[ok].astype(np.float32), axis=1), 1, atol=1e-2)
        assert not emb[~ok].any()
    assert np.load(ds.shard_file("00003", "npy", "embeddings")).shape == (0, 64)  # empty, the model's width
    # where the time went: every working part measured (model calls in the actor), a bottleneck named
    m = ds.manifest()["stages"]["score"]
    assert all(m["time_split"][p] > 0 for p in ("reading", "decoding", "model", "writing")), m["time_split"]
    assert m["bottleneck"]["part"] in ("reading", "decoding", "model", "writing") and m["startup_seconds"] > 0

    # the stage's scores are the scorer's own on the same crops (the actor pool changes nothing)
    from filtering.dfn import DFNScorer, ModelSpec
    from filtering.preprocess import Preprocessor
    from filtering.signals import signal_batches
    from pipeline.core.shards import read_samples

    spec = ModelSpec(**tiny_spec)
    direct = {}
    for b in signal_batches(read_samples(ds.shard_file("00000", "tar")), "00000",
                            preprocess=Preprocessor(spec.preprocess_cfg())):
        out = DFNScorer(spec, device="cpu")(b)
        direct.update(zip(out["uid"], out["dfn_score"], strict=True))
    t = pq.read_table(ds.shard_file("00000", "parquet", "signals")).to_pylist()
    assert all(abs(r["dfn_score"] - direct[r["uid"]]) < 1e-5 for r in t)

    # 3) a rerun skips every shard and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in Path(ds.path, "signals").rglob("*") if p.is_file()}
    res = score.run(ctx, cfg)
    assert res["shards"]["skipped_already_done"] == 4
    assert {p: p.stat().st_mtime_ns for p in Path(ds.path, "signals").rglob("*") if p.is_file()} == before
    m = ds.manifest()["stages"]["score"]
    assert m["embeddings"] and "dfn_score" in m["signals"] and m["shards"]["done"] == 4

    # 4) a damaged signals file is noticed and that shard alone is rescored
    Path(ds.shard_file("00001", "parquet", "signals")).write_bytes(b"garbage")
    res = score.run(ctx, cfg)
    assert res["shards"]["skipped_already_done"] == 3
    assert sorted(all_uids(ds)) == sorted(s.uid for sh in shards for s in sh)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pipeline.stages import score
    from pipeline.pipeline_config import parse_pipeline_config
    from pipeline.stages.context import StageContext

    root, address = sys.argv[1], sys.argv[2]
    real = score.write_scored_shard
    def slow(*a, **k):  # slow the driver down so that the test can kill it between two shards
        out = real(*a, **k)
        time.sleep(1.5)
        return out
    score.write_scored_shard = slow
    cfg = parse_pipeline_config({"root": root, "ray": {"address": address},
                                 "stages": {"score": {"input": "pool", "chunk_rows": 4}}}, "kill.yaml")
    score.run(StageContext(pipeline=cfg, stage="score"), cfg.stages["score"])
""")


def test_kill_mid_run_then_rerun_scores_every_uid_exactly_once(ray_local, tmp_path):
    shards = [[sample(100 + 10 * s + i) for i in range(10)] for s in range(5)]
    ds = write_pool(tmp_path, "pool", shards)
    address = ray_local.get_runtime_context().gcs_address
    done_before, err = kill_after_first_shard(KILL_SCRIPT, [str(tmp_path), address], ds, "signals", tmp_path, 120)
    assert 1 <= len(done_before) < 5, err
    mtimes = {s: os.stat(ds.shard_file(s, "parquet", "signals")).st_mtime_ns for s in done_before}

    ctx, cfg = score_ctx(str(tmp_path), None)
    res = score.run(ctx, cfg)
    assert res["shards"]["skipped_already_done"] == len(done_before) and res["shards"]["done"] == 5
    assert {s: os.stat(ds.shard_file(s, "parquet", "signals")).st_mtime_ns for s in done_before} == mtimes
    uids = all_uids(ds)
    assert len(uids) == len(set(uids)) == 50
    assert set(uids) == {s.uid for sh in shards for s in sh}
