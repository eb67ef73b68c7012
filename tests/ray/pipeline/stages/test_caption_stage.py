"""The caption stage on Ray Data: every uid captioned once and judged, undecodable and held-out images get reasons
instead of captions, settings changes redo shards, bad weights and a judge that is the captioner fail before any
work, and a kill mid-stage is repaired by a rerun."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from capfilt_testdata import GREEDY, stage_cfg
from curation_testdata import Sample, sample, write_pool
from stage_kill import kill_after_first_shard

from filtering.capfilt import CapFiltError
from filtering.captioner import CaptionerError
from pipeline.core.config import ConfigError
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.stages import caption
from pipeline.stages.context import StageContext


def ctx_for(root, stages: dict, name: str, **top):
    cfg = parse_pipeline_config({"root": str(root), **top, "stages": stages}, "t.yaml")
    return StageContext(pipeline=cfg, stage=name, config_path="t.yaml"), cfg.stages[name]


def rows_of(ds) -> list[dict]:
    return [r for s in sorted(ds.done_shards("captions"))
            for r in pq.read_table(ds.shard_file(s, "parquet", "captions")).to_pylist()]


def test_captions_and_judge_scores_per_uid_then_skip_and_redo(ray_local, tmp_path, capfilt_models):
    shards = [[sample(500 + 7 * s + i) for i in range(7)] for s in range(3)]
    shards[1].append(Sample(b"\xff\xd8 not a jpeg", "a broken image", "http://web.test/broken.jpg"))
    ds = write_pool(tmp_path, "pool", shards)
    res = caption.run(*ctx_for(tmp_path, {"caption": stage_cfg(capfilt_models)}, "caption"))
    assert res["samples"] == 22 and res["ok"] == 21 and res["reasons"] == {"undecodable": 1}
    rows = rows_of(ds)
    assert sorted(r["uid"] for r in rows) == sorted(s.uid for sh in shards for s in sh)  # each uid once
    broken = next(r for r in rows if r["uid"] == shards[1][-1].uid)
    assert broken["reason"] == "undecodable" and broken["synthetic_captions"] == [] and broken["web_score"] is None
    good = [r for r in rows if r["reason"] is None]
    assert all(len(r["synthetic_captions"]) == 1 and r["synthetic_captions"][0] for r in good)
    assert all(np.isfinite(r["web_score"]) and len(r["synthetic_scores"]) == 1 for r in good)
    p = np.array([r["web_probability"] for r in good])
    assert np.allclose(p, 1 / (1 + np.exp(-40 * np.array([r["web_score"] for r in good]))), atol=1e-5)
    assert {r["captioner"] for r in rows} == {res_id(ds, "captioner_id")} and len({r["decoding"] for r in rows}) == 1
    assert json.loads(rows[0]["decoding"])["strategy"] == "greedy"

    # the stage's captions and scores are the models' own on the same crops (the actor pool changes nothing)
    from filtering.capfilt import CaptionJudge
    from filtering.captioner import Captioner, CaptionerSpec
    from filtering.preprocess import Preprocessor
    from filtering.signals import signal_batches
    from pipeline.core.shards import read_samples

    spec = CaptionerSpec(name="tiny-coca", weights=capfilt_models["coca"])
    # the crops from the decode the stage makes: at the model's size (`phash_decode="reduced"` decodes the same)
    (batch,) = signal_batches(read_samples(ds.shard_file("00000", "tar")), "00000",
                              preprocess=Preprocessor(spec.preprocess_cfg()), phash_decode="reduced")
    direct = Captioner(spec, {**GREEDY, "device": "cpu"}).captions(batch["pixels"], batch["uid"])
    judged = CaptionJudge(stage_cfg(capfilt_models)["caption_filter"], "cpu").scores(
        batch["pixels"], [[c] + d for c, d in zip(batch["caption"], direct, strict=True)])
    by_uid = {r["uid"]: r for r in rows}
    for uid, caps, scores in zip(batch["uid"], direct, judged, strict=True):
        assert by_uid[uid]["synthetic_captions"] == caps
        assert by_uid[uid]["web_score"] == pytest.approx(scores[0], abs=1e-5)
        assert by_uid[uid]["synthetic_scores"][0] == pytest.approx(scores[1], abs=1e-5)

    res = caption.run(*ctx_for(tmp_path, {"caption": stage_cfg(capfilt_models)}, "caption"))
    assert res["shards"]["skipped_already_done"] == 3
    other = stage_cfg(capfilt_models, decoding={**GREEDY, "max_length": 4, "min_length": 4})
    res = caption.run(*ctx_for(tmp_path, {"caption": other}, "caption"))
    assert res["shards"]["skipped_already_done"] == 0  # other decoding settings: every shard redone
    assert all(len(r["synthetic_captions"][0].split()) <= 4 for r in rows_of(ds) if r["reason"] is None)


def res_id(ds, key: str) -> str:
    return ds.manifest()["stages"]["caption"][key]


def test_held_out_pairs_of_the_filter_stage_are_never_captioned(ray_local, tmp_path, capfilt_models):
    """Training stages that hold out part of this very input: those pairs are their evaluation set."""
    from filtering.holdout import held_out

    ds = write_pool(tmp_path, "pool", [[sample(600 + i) for i in range(20)]])
    trainer = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-coca"}, "objective": "coca",
               "holdout": {"fraction": 0.3, "seed": 1}}
    from safetensors.torch import load_file

    os.makedirs(tmp_path / "train_captioner")
    # as train-clip exports it
    torch.save(load_file(capfilt_models["coca"]), tmp_path / "train_captioner" / "model.pt")
    cap = {k: v for k, v in stage_cfg(capfilt_models).items() if k != "captioner"}
    res = caption.run(*ctx_for(tmp_path, {"train_captioner": trainer, "caption": {
        **cap, "captioner_from": "train_captioner"}}, "caption"))
    held = {s.uid for s in [sample(600 + i) for i in range(20)] if held_out(s.uid, 0.3, 1)}
    assert 2 <= len(held) <= 12 and res["reasons"] == {"held_out": len(held)}
    for r in rows_of(ds):
        assert (r["reason"] == "held_out") == (r["uid"] in held)
        assert (r["synthetic_captions"] == []) == (r["uid"] in held)


def test_bad_weights_and_a_judge_that_is_the_captioner_fail_before_any_work(tmp_path, capfilt_models):
    m = capfilt_models
    from pipeline.cli.run import run_pipeline

    write_pool(tmp_path, "pool", [[sample(700 + i) for i in range(3)]])
    score = {"score": {"input": "pool"}}
    missing = str(tmp_path / "nope" / "coca.pt")
    cases = [
        (stage_cfg(m, captioner={"name": "tiny-coca", "weights": missing}), CaptionerError,
         rf"{missing}: no such file.*model config 'tiny-coca'"),
        (stage_cfg(m, captioner={"name": "tiny-coca", "weights": m["other_clip"]}), CaptionerError,
         rf"{m['other_clip']} do not match model config 'tiny-coca'"),
        (stage_cfg(m, caption_filter={"name": "tiny-coca", "weights": m["coca"]}), CapFiltError,
         r"rejected 8% of them"),
    ]
    for cfg, error, message in cases:
        pc = parse_pipeline_config({"root": str(tmp_path), "stages": {**score, "caption": cfg}}, "t.yaml")
        with pytest.raises(error, match=message):
            run_pipeline(pc, config_path="t.yaml")
        assert not os.path.exists(tmp_path / "pool" / "signals")  # the score stage before it never ran
    trainer = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-coca"}, "objective": "coca"}
    same = {k: v for k, v in stage_cfg(capfilt_models).items() if k not in ("captioner", "caption_filter")}
    pc = parse_pipeline_config({"root": str(tmp_path), "stages": {"t": trainer, "caption": {
        **same, "captioner_from": "t", "caption_filter_from": "t"}}}, "t.yaml")
    with pytest.raises(ConfigError, match=r"8%.*both name stage 't'"):
        run_pipeline(pc, config_path="t.yaml")
    clip_trainer = {**trainer, "model": {"name": "tiny-clip-rn"}, "objective": "clip"}
    pc = parse_pipeline_config({"root": str(tmp_path), "stages": {"t": clip_trainer, "caption": {
        **same, "captioner_from": "t", "caption_filter": stage_cfg(capfilt_models)["caption_filter"]}}}, "t.yaml")
    with pytest.raises(ConfigError, match="a captioner must be a CoCa"):
        run_pipeline(pc, config_path="t.yaml")
    pc = parse_pipeline_config({"root": str(tmp_path), "synthetic": {"dir": str(tmp_path / "web")}, "stages": {
        "caption": stage_cfg(capfilt_models, input="web")}}, "t.yaml")
    with pytest.raises(ConfigError, match="evaluation sets are never captioned"):
        run_pipeline(pc, config_path="t.yaml")


KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pipeline.stages import caption
    from pipeline.pipeline_config import parse_pipeline_config
    from pipeline.stages.context import StageContext

    root, address, stage = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    real = caption.write_caption_shard
    def slow(*a, **k):  # slow the driver down so that the test can kill it between two shards
        out = real(*a, **k)
        time.sleep(1.5)
        return out
    caption.write_caption_shard = slow
    cfg = parse_pipeline_config({"root": root, "ray": {"address": address}, "stages": {"caption": stage}}, "k.yaml")
    caption.run(StageContext(pipeline=cfg, stage="caption"), cfg.stages["caption"])
""")


def test_kill_mid_stage_then_rerun_captions_every_uid_exactly_once(ray_local, tmp_path, capfilt_models):
    shards = [[sample(800 + 5 * s + i) for i in range(5)] for s in range(5)]
    ds = write_pool(tmp_path, "pool", shards)
    address = ray_local.get_runtime_context().gcs_address
    before, err = kill_after_first_shard(KILL_SCRIPT, [str(tmp_path), address, json.dumps(stage_cfg(capfilt_models))],
                                         ds, "captions", tmp_path)
    assert 1 <= len(before) < 5, err
    mtimes = {s: os.stat(ds.shard_file(s, "parquet", "captions")).st_mtime_ns for s in before}
    res = caption.run(*ctx_for(tmp_path, {"caption": stage_cfg(capfilt_models)}, "caption"))
    assert res["shards"]["skipped_already_done"] == len(before) and res["shards"]["done"] == 5
    assert {s: os.stat(ds.shard_file(s, "parquet", "captions")).st_mtime_ns for s in before} == mtimes
    uids = [r["uid"] for r in rows_of(ds)]
    assert len(uids) == len(set(uids)) == 25 and set(uids) == {s.uid for sh in shards for s in sh}


def test_a_probability_cut_needs_a_calibrated_filter_before_any_work(tmp_path, capfilt_models):
    from filtering.recipe import RecipeError
    from pipeline.stages import filter as filter_stage

    uncalibrated = {k: v for k, v in stage_cfg(capfilt_models).items() if k != "calibration"}
    for cap, ok in ((uncalibrated, False), (stage_cfg(capfilt_models), True)):
        ctx, cfg = ctx_for(tmp_path, {"score": {"input": "pool"}, "caption": cap,
                                      "filter": {"input": "pool", "recipe": "capfilt"}}, "filter")
        if ok:
            filter_stage.preflight(ctx, cfg)
        else:
            with pytest.raises(RecipeError, match=r"capfilt: needs 'caption_calibrated'.*caption stage"):
                filter_stage.preflight(ctx, cfg)


def test_a_judge_with_the_scorers_weights_reuses_the_score_stages_embeddings(ray_local, tmp_path, capfilt_models):
    """Start once: when the pool was scored by the judge's own weights and config, the caption stage's judge reads
    the stored image embeddings instead of encoding every image again; captions are the same, scores agree to the
    float16 the embeddings are stored in, and an image without a stored embedding (here: a shard the score stage
    did not see) is encoded as before."""
    from pipeline.stages import score

    shards = [[sample(700 + 6 * s + i) for i in range(6)] for s in range(2)]
    shards[0].append(Sample(b"\xff\xd8 not a jpeg", "a broken image", "http://web.test/broken2.jpg"))
    judge = stage_cfg(capfilt_models)["caption_filter"]
    scorer = {"input": "pool", "model": {"name": judge["name"], "pretrained": judge["weights"],
                                         "config_file": judge["config_file"]}, "batch_size": 8, "chunk_rows": 6}
    runs = {}
    for name, scored in (("pool", True), ("plain", False)):
        root = tmp_path / name
        ds = write_pool(root, "pool", shards)
        if scored:
            score.run(*ctx_for(root, {"score": scorer}, "score"))
            # the score stage's marker of shard 00001 goes: that shard's judge must encode its images itself
            os.remove(ds.sub("signals", "_done", "00001"))
        res = caption.run(*ctx_for(root, {"caption": stage_cfg(capfilt_models)}, "caption"))
        runs[name] = ({r["uid"]: r for r in rows_of(ds)}, res, ds.manifest()["stages"]["caption"])
    rows, res, section = runs["pool"]
    assert res["ok"] == 12 and section["judge_embeddings_reused"] == 6  # shard 00000's decodable images only
    assert runs["plain"][2]["judge_embeddings_reused"] == 0
    theirs = runs["plain"][0]  # the same pool, never scored: every image encoded by the judge
    assert rows.keys() == theirs.keys()
    for uid, r in rows.items():
        assert (r["synthetic_captions"], r["reason"]) == (theirs[uid]["synthetic_captions"], theirs[uid]["reason"])
        if r["reason"] is None:
            assert r["web_score"] == pytest.approx(theirs[uid]["web_score"], abs=2e-3)
            assert r["synthetic_scores"] == pytest.approx(theirs[uid]["synthetic_scores"], abs=2e-3)
    moved = [abs(r["web_score"] - theirs[u]["web_score"]) for u, r in rows.items() if r["reason"] is None]
    assert max(moved) > 0  # the reused rows really came from the stored float16 embeddings
