"""A whole run on S3 (a moto server on loopback): download -> score -> filter -> reshard -> train-clip -> status,
eval and report, every output in the bucket and nothing on the local disk but the synthetic web; a rerun skips
every shard and the finished training; more steps resume on a Ray Train worker from the checkpoint in the bucket."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline.cli.evaluate import evaluate_stage
from pipeline.cli.run import run_pipeline
from pipeline.cli.status import status_rows
from pipeline.core.layout import Dataset, fs_and_path, join, read_json
from pipeline.core.shards import read_samples
from pipeline.pipeline_config import load_pipeline_config

NO_FAULTS = {k: 0.0 for k in ("http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out")}
POOL = 100
STEPS = 10
TEMP_PREFIXES = ("winnow-run-", "winnow-get-", "winnow-download-")


def write_config(tmp_path: Path, root: str, steps: int = STEPS, workers: int = 0) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s3", "root": root,
        "synthetic": {"dir": str(tmp_path / "web"), "pool_size": POOL, "hq_size": 5, "test_size": 24,
                      "faults": NO_FAULTS},
        "stages": {
            "download": {"source": "synthetic", "output": "pool", "image_size": 32, "resize_mode": "center_crop",
                         "number_sample_per_shard": 50, "thread_count": 8},
            "score": {"input": "pool", "model": {"name": "tiny-clip-vit"}, "batch_size": 64},
            "filter": {"input": "pool", "recipe": "basic"},
            "reshard": {"input": "pool", "recipe": "basic", "output": "curated", "samples_per_shard": 30},
            "train": {"kind": "train-clip", "input": "curated", "model": {"name": "tiny-sigmoid-vit"},
                      "objective": "siglip", "steps": steps, "log_every": 5, "checkpoint_every": 5,
                      "data": {"batch_size": 16, "loader_workers": 0, "shuffle_buffer": 32},
                      "optim": {"warmup_steps": 2}, "scaling": {"num_workers": workers, "cpus_per_worker": 1},
                      "eval": {"max_samples": 24, "batch_size": 24}},
        }}, sort_keys=False))  # stage order matters
    return path


def objects(url: str) -> dict[str, str]:
    """relative key -> ETag of every object under `url` (a rewritten object gets a new ETag)."""
    fs, base = fs_and_path(url)
    return {p[len(base) + 1:]: info["ETag"] for p, info in fs.find(base, detail=True).items()}


def local_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def temp_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(TEMP_PREFIXES)}


def test_a_run_rooted_on_s3_writes_everything_there_and_resumes_from_it(ray_local, s3_bucket, tmp_path,
                                                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray relative write (an `s3:/...` folder, say) would land here
    temps_before = temp_dirs()
    root = join(s3_bucket, "run")
    cfg = load_pipeline_config(write_config(tmp_path, root))
    first = run_pipeline(cfg)

    # --- download: every URL once, all fetched (no faults) ----------------------------------------------------
    pool = Dataset(root, "pool")
    assert first["download"]["samples"] == first["download"]["ok"] == POOL
    assert sorted(pool.done_shards()) == ["00000", "00001"]
    rows = [r for url in pool.shard_files(ext="parquet") for r in _parquet(url).to_pylist()]
    assert len(rows) == len({r["uid"] for r in rows}) == POOL

    # --- score: one signals row per downloaded sample, with a finite dfn_score -------------------------------
    signals = [r for url in pool.shard_files("signals", "parquet") for r in _parquet(url).to_pylist()]
    assert sorted(r["uid"] for r in signals) == sorted(r["uid"] for r in rows)
    assert all(math.isfinite(r["dfn_score"]) for r in signals if r["decodable"])

    # --- filter and reshard: kept + dropped = pool; the curated shards hold each kept uid exactly once ---------
    selection = _parquet(pool.sub("selection", "basic.parquet")).to_pylist()
    kept = {r["uid"] for r in selection if r["kept"]}
    assert len(selection) == POOL and first["filter"]["kept"] == len(kept) and 0 < len(kept) < POOL
    curated = Dataset(root, "curated")
    keys = [key for url in curated.shard_files() for key, _ in read_samples(url)]
    assert len(keys) == len(set(keys)) == len(kept) and set(keys) == kept
    assert sum(read_json(curated.sub("shards", "sizes.json")).values()) == len(kept)

    # --- train-clip: every output in the bucket; model.pt loads and embeds ------------------------------------
    train = first["train"]
    model_dir = join(root, "train")
    out = objects(model_dir)
    assert train["step"] == STEPS and train["weights"] == join(model_dir, "model.pt")
    for name in ("metrics.csv", "curves.png", "model.pt", "model_config.json", "eval.json", "train.json",
                 "manifest.json", "checkpoints/step_0000005/state.json", "checkpoints/step_0000010/state.json"):
        assert name in out, f"{name} missing from {model_dir}: {sorted(out)}"
    assert any(k.startswith("tb/events.out.tfevents") for k in out)
    metrics = _csv(join(model_dir, "metrics.csv"))
    assert [int(r["step"]) for r in metrics] == [5, 10]
    assert read_json(join(model_dir, "eval.json"))["zeroshot"]["samples"] == 24
    _assert_weights_embed(join(model_dir, "model.pt"))

    # --- status, eval and report read the bucket ---------------------------------------------------------------
    status = {r[0]: r for r in status_rows(cfg)}
    assert {name: r[3] for name, r in status.items()} == dict.fromkeys(cfg.stages, "complete")
    assert status["download"][4] == "2/2" and status["download"][5] == POOL and status["train"][4] == "10/10"
    again = evaluate_stage(cfg)["train"]
    assert again["zeroshot"]["top1"] == train["eval"]["zeroshot"]["top1"]
    fs, report = fs_and_path(pool.sub("report", "index.html"))
    html = fs.cat_file(report).decode()
    assert "could not be built" not in html and "train/eval.json" in html and "Training shards" in html

    # --- the rerun: every shard skipped and the finished training not started (no object rewritten) ------------
    shards_before = {(name, folder): objects(Dataset(root, name).sub(folder)) for name, folder in
                     (("pool", "shards"), ("pool", "signals"), ("pool", "embeddings"), ("curated", "shards"))}
    model_before = objects(model_dir)
    second = run_pipeline(cfg)
    assert second["download"]["shards"]["skipped_already_done"] == 2
    assert second["score"]["shards"]["skipped_already_done"] == 2
    assert second["reshard"]["shards"]["skipped_already_done"] == second["reshard"]["shards"]["total"]
    assert second["train"]["skipped"] == "already complete" and second["train"]["step"] == STEPS
    assert second["train"]["eval"] == train["eval"] and objects(model_dir) == model_before  # train.json too
    for (name, folder), before in shards_before.items():
        after = objects(Dataset(root, name).sub(folder))
        assert {k: v for k, v in after.items() if "_done" not in k} == \
            {k: v for k, v in before.items() if "_done" not in k}, f"{name}/{folder} rewritten on rerun"

    # --- more steps on a Ray Train worker: it resumes from the checkpoint in the bucket, trains on and writes there --
    # (the first run trained in-process, which saves a worker group's start; the checkpoints are the same either way)
    more = load_pipeline_config(write_config(tmp_path, root, steps=STEPS + 5, workers=1))
    third = run_pipeline(more, "train")["train"]
    assert third["step"] == STEPS + 5 and third["resumed_from"] == [STEPS] and third["world"] == 1
    assert "checkpoints/step_0000015/state.json" in objects(model_dir)
    assert [int(r["step"]) for r in _csv(join(model_dir, "metrics.csv"))] == [5, 10, 15]

    # --- the local disk holds only the config and the synthetic web; no staging folder is left behind ---------
    assert {f for f in local_files(tmp_path) if not f.startswith("web/")} == {"config.yaml"}
    assert temp_dirs() <= temps_before


def _parquet(url: str):
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _csv(url: str) -> list[dict]:
    import csv
    import io

    fs, path = fs_and_path(url)
    return list(csv.DictReader(io.StringIO(fs.cat_file(path).decode())))


def _assert_weights_embed(url: str) -> None:
    import open_clip
    import torch

    from pipeline.core.model_configs import register_model_configs
    from pipeline.core.storage import local_copy
    from training.engine.checkpoint import load_weights

    state = load_weights(url)
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    register_model_configs()
    with local_copy(url) as path:
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-sigmoid-vit", pretrained=path)
    with torch.no_grad():
        emb = model.encode_image(torch.rand(2, 3, 32, 32), normalize=True)
    assert emb.shape == (2, 64) and torch.isfinite(emb).all()
