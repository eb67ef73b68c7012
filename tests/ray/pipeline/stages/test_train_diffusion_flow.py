"""A normalizing flow as a train-diffusion model family, through the stage (in the driver: Glow on two gloo workers is
tests/ray/training/generative/test_flow_two_workers.py's, the stage on two workers test_train_diffusion_stage.py's):
Glow with class conditioning trains (checkpoints), its held-out bits/dim ends well below a uniform
model's 8, `winnow eval` on the exported EMA weights gives the same bits/dim beside the Frechet distance and the
judge's scores, a longer rerun resumes from the checkpoint, and the report shows the flow's grid and bits/dim.
(The flow task itself, each family and actnorm's resume are tested in-process in
tests/unit/training/generative/flows/test_flow_task.py.)"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import yaml
from training_shapes import make_pool, make_testset

from pipeline.cli.evaluate import evaluate_stage
from pipeline.cli.run import run_pipeline
from pipeline.pipeline_config import load_pipeline_config

STEPS, BATCH = 60, 32


def write_config(root: Path, heldout: tuple[str, str], steps: int) -> Path:
    shards, classnames = heldout
    body = {"kind": "train-diffusion", "input": "pool", "steps": steps, "log_every": 10, "checkpoint_every": 30,
            "model": {"kind": "glow", "levels": 2, "steps_per_level": 2, "hidden": 32, "conditioning": "class"},
            "optim": {"lr": 1e-2, "warmup_steps": 10}, "flow": {"init_samples": 64, "grid": 4},
            "data": {"resolution": 8, "batch_size": BATCH, "loader_workers": 0, "shuffle_buffer": 64},
            "eval": {"judge_from": "judge", "heldout": shards, "classnames": classnames, "frechet_samples": 48,
                     "attribute_seeds": 1, "likelihood": {"samples": 64}},
            "scaling": {"num_workers": 0, "torch_threads": 1}}
    judge = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-clip-rn"}, "objective": "clip"}
    path = root / f"config-{steps}.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": str(root), "stages": {"judge": judge, "generator": body}}))
    return path


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> tuple[Path, tuple[str, str]]:
    """A shapes pool, a held-out set, and a judge where a train-clip stage leaves its weights (random weights: the
    judge's quality is not what this test is about, only that the flow's samples reach it)."""
    import open_clip
    import torch

    from pipeline.core.model_configs import register_model_configs
    from training.engine.checkpoint import save_weights

    root = tmp_path_factory.mktemp("flowgen")
    make_pool(str(root), "pool", shards=2, per_shard=256)
    register_model_configs()
    torch.manual_seed(5)
    (root / "judge").mkdir()
    save_weights(str(root / "judge" / "model.pt"), open_clip.create_model("tiny-clip-rn"))
    return root, make_testset(str(root / "heldout"), n=96)


def test_a_flow_trains_through_the_stage_and_winnow_eval_reports_its_bits_per_dim(ray_local, run_root):
    root, heldout = run_root
    cfg = load_pipeline_config(write_config(root, heldout, STEPS))
    result = run_pipeline(cfg, "generator")["generator"]
    out = root / "generator"
    assert result["step"] == STEPS and result["samples_seen"] == STEPS * BATCH
    assert "rng_rank0.safetensors" in set(os.listdir(out / "checkpoints" / "step_0000060"))
    with open(out / "metrics.csv") as f:
        curve = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert curve[-1] < curve[0] - 0.5, curve
    lk = result["eval"]["likelihood"]
    # a uniform density on the 8-bit cube is 8 bits/dim; measured 5.3-5.4 after 60 steps of 32 images
    assert lk["bits_per_dim"] < 8 - 1.5 and lk["samples"] == 64 and lk["method"] == "exact change of variables"
    assert result["eval"]["frechet"]["samples"] == 48 and result["eval"]["attributes"]["images"] == 12
    assert result["encoder"] is None and result["grid"].endswith("samples.png")

    again = evaluate_stage(cfg, "generator")["generator"]  # `winnow eval`: the exported EMA weights, same seeds
    assert again["likelihood"]["bits_per_dim"] == pytest.approx(lk["bits_per_dim"], abs=1e-6)
    assert again["frechet"]["fd"] == pytest.approx(result["eval"]["frechet"]["fd"], rel=1e-6)

    longer = run_pipeline(load_pipeline_config(write_config(root, heldout, STEPS + 20)), "generator")["generator"]
    assert longer["resumed_from"] == [STEPS] and longer["step"] == STEPS + 20
    assert longer["eval"]["likelihood"]["bits_per_dim"] < lk["bits_per_dim"] + 0.05

    from pipeline.report import build_report, load_report_data

    html = Path(build_report(cfg, data=load_report_data(cfg, dataset="pool"))).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "glow normalizing flow, 2 levels x 2 steps" in text
    assert f"held-out bits/dim {longer['eval']['likelihood']['bits_per_dim']:.3f}" in text
