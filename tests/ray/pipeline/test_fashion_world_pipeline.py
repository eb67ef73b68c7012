"""The fashion world through the same stages as the rendered worlds: download from loopback with faults -> a few
training steps with the zero-shot check on its 10-class test set -> score the pool. The photos are the committed
extract (tests/data/fashion_small.npz), as on CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from curation_testdata import small_pipeline

from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

FIXTURE = str(Path(__file__).resolve().parents[2] / "data" / "fashion_small.npz")


@pytest.mark.timeout(240)
def test_download_train_and_score_run_on_the_fashion_world(ray_local, tmp_path):
    root = tmp_path / "run"
    body = {"name": "fashion", **small_pipeline(root, {
        "world": "fashion", "fashion_data": FIXTURE, "pool_size": 160, "hq_size": 0, "test_size": 50,
        "slow_seconds": 3.0})}
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
