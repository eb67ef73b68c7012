"""The contrastive task on the engine: LiT leaves locked weights alone, NaN steps are skipped then stop the run, a
rerun resumes instead of restarting, and `run_eval` on the saved weights agrees with the in-training evaluation."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from test_contrastive_objectives import tiny_run, train_contrastive

from training.contrastive.config import EvalConfig, ModelConfig
from training.contrastive.data import ErrorCounter, tar_samples
from training.contrastive.eval import run_eval
from training.contrastive.models import build_model
from training.contrastive.task import ContrastiveTask
from training.engine import TrainingDiverged, fit
from training.engine.checkpoint import load_weights


def test_lit_leaves_the_locked_image_tower_unchanged(shapes, tmp_path):
    cfg = tiny_run("clip", "tiny-clip-vit", {"model": {"lock_image": True}}, steps=8)
    train_contrastive(cfg, shapes["pool"], str(tmp_path))
    trained = load_weights(str(tmp_path / "model.pt"))
    torch.manual_seed(cfg.seed)  # the loop seeds the same way before building the model
    initial = build_model(ModelConfig(name="tiny-clip-vit"), "clip").clip.state_dict()
    visual = [k for k in initial if k.startswith("visual.")]
    text = [k for k in initial if k.startswith(("transformer.", "token_embedding", "text_projection"))]
    assert visual and text
    assert all(torch.equal(trained[k], initial[k]) for k in visual)
    assert sum(not torch.equal(trained[k], initial[k]) for k in text) >= len(text) // 2  # the text tower trained


class PoisonedTask(ContrastiveTask):
    """SigLIP whose loss turns NaN at the second call and from the fourth on: one bad step, a good one, then bad
    for good."""

    calls = 0

    def loss(self, model, batch):
        parts = super().loss(model, batch)
        self.calls += 1
        if self.calls == 2 or self.calls > 3:
            parts["loss"] = parts["loss"] * float("nan")
        return parts


def test_non_finite_steps_are_skipped_and_enough_of_them_stop_the_run(shapes, tmp_path):
    cfg = tiny_run("siglip", "tiny-sigmoid-vit", {}, steps=20, max_bad_steps=3, log_every=1)
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps had a non-finite loss.*step 6"):
        fit(PoisonedTask(cfg, shapes["pool"]), cfg, str(tmp_path))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 3]  # step 2 was skipped, 4-6 were bad, the run stopped at 6
    assert [int(r["skipped_steps"]) for r in rows] == [0, 1]


def test_a_rerun_resumes_from_the_last_checkpoint(shapes, tmp_path):
    first = tiny_run("siglip", "tiny-sigmoid-vit", {}, steps=10, checkpoint_every=5)
    train_contrastive(first, shapes["pool"], str(tmp_path))
    longer = first.model_copy(update={"steps": 15})  # "run the same command again", with more steps
    result = train_contrastive(longer, shapes["pool"], str(tmp_path))
    assert result["step"] == 15 and result["resumed_from"] == [10]
    assert result["samples_seen"] == 15 * 32
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [5, 10, 15]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_0000010", "step_0000015"]  # keep_checkpoints: 2


def test_run_eval_on_saved_weights_matches_the_training_eval_also_from_an_image_folder(shapes, tmp_path):
    ev = {"zeroshot": {"shards": shapes["test"], "classnames": shapes["classnames"]},
          "retrieval": {"shards": shapes["test"]}}
    cfg = tiny_run("clip", "tiny-clip-vit", {}, steps=20).model_copy(update={"eval": EvalConfig(**ev)})
    train_contrastive(cfg, shapes["pool"], str(tmp_path / "run"))
    with open(tmp_path / "run" / "eval.json") as f:
        during = json.load(f)
    after = run_eval(ev, "tiny-clip-vit", str(tmp_path / "run" / "model.pt"), out=str(tmp_path / "eval.json"))
    assert after["zeroshot"]["top1"] == during["zeroshot"]["top1"] > 1 / 12
    assert after["retrieval"] == during["retrieval"]

    # the same images as an ImageFolder (folders sort in class index order) give the same accuracy
    for s in tar_samples([shapes["test"]], ErrorCounter()):
        folder = tmp_path / "folder" / f"{int(s['cls']):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{s['__key__']}.jpg").write_bytes(s["jpg"])
    folder_eval = {"zeroshot": {"image_folder": str(tmp_path / "folder"), "classnames": shapes["classnames"]}}
    from_folder = run_eval(folder_eval, "tiny-clip-vit", str(tmp_path / "run" / "model.pt"))
    assert from_folder["zeroshot"]["samples"] == during["zeroshot"]["samples"]
    assert from_folder["zeroshot"]["top1"] == pytest.approx(during["zeroshot"]["top1"])


def test_catlip_zero_shot_uses_its_word_head_in_training_and_in_run_eval(shapes, tmp_path):
    ev = {"zeroshot": {"shards": shapes["test"], "classnames": shapes["classnames"]}}
    cfg = tiny_run("catlip", "tiny-clip-vit", {}, steps=30).model_copy(update={"eval": EvalConfig(**ev)})
    train_contrastive(cfg, shapes["pool"], str(tmp_path))
    with open(tmp_path / "eval.json") as f:
        during = json.load(f)["zeroshot"]
    after = run_eval(ev, "tiny-clip-vit", str(tmp_path / "model.pt"), catlip_dir=str(tmp_path))["zeroshot"]
    assert after["top1"] == during["top1"] >= 2 / 12  # class names are caption words: twice chance after 30 steps


def test_a_clip_config_trained_with_siglip_still_loads_by_name(shapes, tmp_path):
    import open_clip

    from pipeline.core.model_configs import register_model_configs

    train_contrastive(tiny_run("siglip", "tiny-clip-vit", {}, steps=5), shapes["pool"], str(tmp_path))
    register_model_configs()
    loaded, _, _ = open_clip.create_model_and_transforms("tiny-clip-vit", pretrained=str(tmp_path / "model.pt"))
    trained = load_weights(str(tmp_path / "model.pt"))
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    with open(tmp_path / "model_config.json") as f:
        assert json.load(f)["logit_bias"] == pytest.approx(-10.0, abs=0.1)  # the trained bias is kept here
