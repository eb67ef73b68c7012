"""A bootstrap's filter checks itself: the train-clip stage holds back part of its data, estimates its AUROC there
without labels at each evaluation, exports the best checkpoint, and the estimate tracks the true AUROC on the
synthetic web (which the estimate never sees)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from capfilt_testdata import CLEAN

from filtering.holdout import HoldoutProbe, HoldoutSplit, auroc
from training.contrastive.data import ErrorCounter
from training.contrastive.holdout import SkipHeldOut
from training.engine.checkpoint import step_dir_name


def _scorers(points: list[dict | None]):
    """A match scorer per set of weights (None: random init), all on one model."""
    import open_clip

    from pipeline.core.model_configs import register_model_configs
    from training.contrastive.eval import pair_scores

    register_model_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-rn")
    tok = open_clip.get_tokenizer("tiny-clip-rn")
    for weights in points:
        if weights is not None:
            model.load_state_dict(weights)
        yield lambda images, captions: pair_scores(model.eval(), tok, preprocess, images, captions, "cpu").numpy()


def test_the_summary_reports_the_estimate_and_model_pt_is_the_best_checkpoint(trained_filter):
    from training.engine.checkpoint import load_weights

    _, result, out = trained_filter
    check = result["holdout"]
    history = {h["step"]: h["estimated_auroc"] for h in check["history"]}
    assert sorted(history) == [20, 40, 60, 80]
    assert check["step"] == max(history, key=history.get)
    assert check["estimated_auroc"] == pytest.approx(history[check["step"]], abs=1e-4)
    assert check["pairs"] >= 100 and check["negatives"] == 2 * check["pairs"]  # shuffled + junk
    # near misses are measured beside them, not counted (a DFN's check: holdout.near_misses off)
    assert check["near_miss_pairs"] > 0.5 * check["pairs"] and check["near_misses_counted"] is False
    assert 0 <= check["auroc_near_miss"] <= 1 and check["near_misses"] is False  # the config's switch
    with open(os.path.join(out, "holdout.json")) as f:
        saved = json.load(f)
    assert saved["step"] == check["step"] and saved["near_misses"] is False  # the config's switch, recorded
    assert 0 < saved["cut"]["probability"] < 1 and 0.5 <= saved["cut"]["balanced_accuracy"] <= 1
    manifest = json.load(open(os.path.join(out, "manifest.json")))["stages"]["train_filter"]
    assert manifest["estimated_auroc"] == check["estimated_auroc"] and manifest["holdout_step"] == check["step"]
    from pipeline.report.capfilt import checks_section
    from pipeline.report.data import ReportData

    html = checks_section(ReportData.load(os.path.dirname(out), "hq"))
    assert f"{check['estimated_auroc']:.3f}" in html and f"{check['step']} of 80" in html
    exported = load_weights(os.path.join(out, "model.pt"))
    chosen = load_weights(os.path.join(out, "checkpoints", step_dir_name(check["step"]), "model.safetensors"))
    assert all(torch.equal(exported[k], chosen[k]) for k in exported)


def test_held_out_pairs_never_reach_training(trained_filter):
    web, result, _ = trained_filter
    split = HoldoutSplit(0.2, 3)
    stream = SkipHeldOut(web["hq"], lambda im: im, lambda t: t, held_out=split, shuffle_buffer=0)
    seen = []
    for sample in stream.raw(ErrorCounter()):
        seen.append(json.loads(sample["json"])["uid"])
        if len(seen) == 600 - 120 - 5:  # most of one pass
            break
    held = {u for u in web["truth"]["uid"] if split.uid(u)}
    assert not held & set(seen) and 90 <= len(held & set(web["truth"].query("split == 'hq'")["uid"])) <= 150


def test_the_estimate_tracks_the_true_auroc_on_the_synthetic_web(trained_filter):
    """At random init and at every saved step: the label-free estimate vs the AUROC against the web's truth."""
    from PIL import Image

    from training.engine.checkpoint import load_weights

    web, result, out = trained_filter
    probe = HoldoutProbe.from_shards(web["hq"], HoldoutSplit(0.2, 3), junk=True)
    steps = [0, 20, 40, 80]
    weights = [None] + [load_weights(os.path.join(out, "checkpoints", step_dir_name(s), "model.safetensors"))
                        for s in steps[1:]]
    pool = web["truth"][web["truth"]["split"] == "pool"]  # the truth: clean pairs vs every corrupted kind
    images = [Image.open(os.path.join(web["web"], p)).convert("RGB") for p in pool["path"]]
    est, true = [], []
    for step, score in zip(steps, _scorers(weights), strict=True):
        est.append(probe.evaluate(score)["estimated_auroc"])
        true.append(auroc(score(images, list(pool["caption"])), pool["noise"].isin(CLEAN).to_numpy()))
        logged = {h["step"]: h["estimated_auroc"] for h in result["holdout"]["history"]}
        if step in logged:
            assert est[-1] == pytest.approx(logged[step], abs=2e-3)  # what training logged is this estimate
    assert abs(est[0] - 0.5) < 0.15 and abs(true[0] - 0.5) < 0.15  # an untrained filter knows nothing, and says so
    assert est[-1] > 0.75 and true[-1] > 0.75
    assert np.max(np.abs(np.array(est) - np.array(true))) < 0.12, (est, true)
    assert np.corrcoef(est, true)[0, 1] > 0.9, (est, true)
