"""The train-clip stage from a pipeline config: a tiny SigLIP trained for under a minute on the shapes shards
reaches zero-shot top-1 far above chance; bad names and empty inputs fail early with errors that say what to fix."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from training_shapes import CLASSNAMES, make_pool, make_testset  # tests/ is on sys.path (its conftest)

from pipeline.cli.run import run_pipeline
from pipeline.core.config import ConfigError
from pipeline.pipeline_config import load_pipeline_config
from pipeline.stages.context import StageContext
from pipeline.stages.train_clip import evaluate
from training.contrastive.models import UnknownModelError

CHANCE = 1 / len(CLASSNAMES)  # 12 classes: 8.3%
TOP1_BAR = 0.5  # six times chance; a 200-step run measured 0.70-0.78 on 2 cores


def write_config(root: Path, test: tuple[str, str], **stage) -> Path:
    shards, classnames = test
    body = {"kind": "train-clip", "input": "pool", "output": "encoder", "model": {"name": "tiny-sigmoid-vit"},
            "objective": "siglip", "steps": 200, "log_every": 25, "checkpoint_every": 100,
            "data": {"batch_size": 64, "loader_workers": 1},
            # in the driver: Ray Train's start-up would double the test's time, and its one-worker path is the
            # S3 run's and the cluster tests' (test_s3_storage.py, tests/e2e)
            "scaling": {"num_workers": 0, "torch_threads": 1},
            "eval": {"zeroshot": {"shards": shards, "classnames": classnames}, "retrieval": {"shards": shards},
                     "every_steps": 100}}
    for key, value in stage.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) and key in body else value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": str(root), "stages": {"train_encoder": body}}))
    return path


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> tuple[Path, tuple[str, str]]:
    root = tmp_path_factory.mktemp("run")
    make_pool(str(root), "pool", shards=4, per_shard=256)
    return root, make_testset(str(root / "heldout"))


def test_a_tiny_siglip_reaches_zero_shot_accuracy_far_above_chance(ray_local, run_root):
    root, test = run_root
    cfg = load_pipeline_config(write_config(root, test))
    result = run_pipeline(cfg, "train_encoder")["train_encoder"]
    out = root / "encoder"
    zs, rt = result["eval"]["zeroshot"], result["eval"]["retrieval"]
    assert result["step"] == 200 and zs["chance"] == pytest.approx(CHANCE)
    assert zs["top1"] >= TOP1_BAR, f"zero-shot top-1 {zs['top1']:.1%} (chance {CHANCE:.1%})"
    assert rt["image_to_text_R@10"] >= 3 * 10 / rt["samples"]  # chance of R@10 is 10/N
    with open(out / "train.json") as f:
        assert json.load(f)["eval"]["zeroshot"]["top1"] == zs["top1"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(25, 201, 25))
    assert [int(r["step"]) for r in rows if r.get("zeroshot_top1")] == [100, 200]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert os.listdir(out / "tb") and (out / "curves.png").stat().st_size > 0
    assert {"step_0000100", "step_0000200"} <= set(os.listdir(out / "checkpoints"))
    # `winnow eval CONFIG`: the saved weights give the in-training numbers again
    ctx = StageContext(pipeline=cfg, stage="train_encoder")
    again = evaluate(ctx, cfg.stages["train_encoder"], out=str(root / "eval-again.json"))
    assert again["zeroshot"]["top1"] == zs["top1"] and again["retrieval"] == rt


def test_an_unknown_model_name_fails_before_training_with_the_closest_names(ray_local, run_root):
    root, test = run_root
    cfg = load_pipeline_config(write_config(root, test, model={"name": "tiny-sigmoid-vti"}, output="bad-model"))
    with pytest.raises(UnknownModelError, match="closest known: tiny-sigmoid-vit"):
        run_pipeline(cfg, "train_encoder")


def test_inputs_that_match_no_shard_name_the_pattern(ray_local, run_root, tmp_path):
    root, test = run_root
    pattern = str(tmp_path / "missing-{00000..00003}.tar")
    cfg = load_pipeline_config(write_config(root, test, data={"input_shards": pattern}, output="x"))
    with pytest.raises(ConfigError, match=r"data\.input_shards: no shard matches the pattern .*missing-\{00000"):
        run_pipeline(cfg, "train_encoder")
    cfg = load_pipeline_config(write_config(root, test, input="never-downloaded", output="y"))
    with pytest.raises(ConfigError, match=r"dataset 'never-downloaded' has no complete shards .*never-downloaded"):
        run_pipeline(cfg, "train_encoder")
