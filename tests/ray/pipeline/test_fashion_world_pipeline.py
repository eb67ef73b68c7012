"""The fashion world through the same stages as the rendered worlds: download from loopback with faults -> a few
training steps with the zero-shot check on its 10-class test set -> score the pool. The photos are the committed
extract (tests/data/fashion_small.npz), as on CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

FIXTURE = str(Path(__file__).resolve().parents[2] / "data" / "fashion_small.npz")


@pytest.mark.timeout(240)
def test_download_train_and_score_run_on_the_fashion_world(ray_local, tmp_path):
    root = tmp_path / "run"
    body = {
        "name": "fashion", "root": str(root), "ray": {"num_cpus": 2, "object_store_mb": 512},
        "synthetic": {"world": "fashion", "fashion_data": FIXTURE, "pool_size": 160, "hq_size": 0, "test_size": 50,
                      "slow_seconds": 3.0},
        "stages": {
            "download": {"source": "synthetic", "output": "pool", "image_size": 32, "resize_mode": "center_crop",
                         "number_sample_per_shard": 80, "thread_count": 16, "timeout": 1},
            "train_filter": {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-clip-vit-s"},
                             "objective": "clip", "steps": 4, "checkpoint_every": 4, "log_every": 4,
                             "data": {"batch_size": 16, "shuffle_buffer": 8, "loader_workers": 1},
                             "scaling": {"num_workers": 0}},
            "score": {"input": "pool", "model_from": "train_filter", "batch_size": 32},
        }}
    path = tmp_path / "fashion.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    out = run_pipeline(load_pipeline_config(path))

    truth = pd.read_parquet(root / "web" / "truth.parquet")
    servable = truth[truth["fault"].isin(["none", "opt_out"])]  # opt-outs are downloaded, then dropped
    assert out["download"]["samples"] == 160 and 0.8 * len(servable) <= out["download"]["ok"] <= len(servable)
    zeroshot = out["train_filter"]["eval"]["zeroshot"]
    assert zeroshot["chance"] == pytest.approx(0.1) and zeroshot["samples"] == 50  # the fashion test set's 10 classes
    signals = pd.concat(pd.read_parquet(p) for p in sorted((Path(Dataset(str(root), "pool").sub("signals"))
                                                           ).glob("*.parquet")))
    ok = signals[signals["decodable"]].merge(truth[["uid", "source"]], on="uid")
    assert len(ok) >= out["download"]["ok"] - 5 and np.isfinite(ok["dfn_score"]).all()
    assert ok["source"].dropna().str.startswith("train:").all()
