"""The report's encoder table: training data traced through manifests, and curated vs raw compared only like for
like (same model, objective, steps and batch; a recipe's cut of the very data the other encoder saw unfiltered)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.pipeline_config import parse_pipeline_config
from pipeline.report.data import ReportData
from pipeline.report.encoders import comparisons, encoders, section, summary_rows


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def encoder(root: Path, name: str, dataset: str, top1: float, steps: int = 400, model: str = "tiny-clip-rn") -> None:
    write_json(root / name / "train.json", {
        "kind": "train-clip", "step": steps, "input": {"dataset": dataset, "shards": 1},
        "config": {"model": {"name": model}, "objective": "clip", "data": {"batch_size": 64}},
        "eval": {"zeroshot": {"top1": top1, "top5": 0.9}}})


def build(root: Path) -> ReportData:
    write_json(root / "pool" / "manifest.json", {"stages": {"download": {"kind": "download", "ok": 3688}}})
    write_json(root / "hq" / "manifest.json", {"stages": {"download_hq": {"kind": "download", "ok": 1900}}})
    write_json(root / "curated" / "manifest.json", {"stages": {"reshard": {
        "kind": "reshard", "source": "pool", "recipe": "dfn_synthetic", "kept": 1012}}})
    write_json(root / "raw" / "manifest.json", {"stages": {"reshard_raw": {
        "kind": "reshard", "source": "pool", "recipe": "none", "kept": 3688}}})
    encoder(root, "train_filter", "hq", 0.40)  # same model and steps, but other data: never compared
    encoder(root, "train", "curated", 0.512)
    encoder(root, "train_raw", "raw", 0.295)
    encoder(root, "train_long", "pool", 0.45, steps=800)  # raw pool, but twice the steps: not a fair baseline
    write_json(root / "train" / "eval.json", {"zeroshot": {"top1": 0.52, "top5": 0.95}})  # a later `winnow eval`
    cfg = parse_pipeline_config({"root": str(root), "stages": {
        "train_filter": {"kind": "train-clip", "input": "hq"},
        "score": {"input": "pool", "model_from": "train_filter"}}}, "r.yaml")
    return ReportData.load(str(root), "pool", pipeline=cfg)


def test_curated_is_compared_only_with_the_raw_encoder_of_equal_steps_on_its_source(tmp_path):
    data = build(tmp_path)
    rows = {r["dir"]: r for r in encoders(data)}
    assert rows["train"]["recipe"] == "dfn_synthetic" and rows["train"]["samples"] == 1012
    assert rows["train_raw"]["recipe"] == "none" and rows["train_raw"]["source"] == "pool"
    assert rows["train_long"]["recipe"] is None and rows["train_long"]["samples"] == 3688
    pairs = [(c["dir"], r["dir"]) for c, r in comparisons(list(rows.values()))]
    assert pairs == [("train", "train_raw")]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", section(data)))
    assert "52.0% vs train_raw (unfiltered, 3688 samples) 29.5% zero-shot top-1: +22.5 points" in text
    assert "train_filter (filtering network) hq: unfiltered 1,900" in text
    assert "train curated: recipe dfn_synthetic of pool 1,012 tiny-clip-rn (clip) 400 x 64 52.0% 95.0% +22.5" in text


def test_the_run_summary_names_the_pair_and_the_gain(tmp_path):
    data = build(tmp_path)
    assert summary_rows(data) == [("curated vs raw", "train 52.0% vs train_raw 29.5% zero-shot top-1 "
                                                              "(+22.5 points; same model, steps and batch)")]
