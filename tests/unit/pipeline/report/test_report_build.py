"""The report: one self-contained file with the funnel numbers, histograms, sample images and known results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from curation_testdata import Sample, jpeg, sample, smooth_image, write_pool

from filtering.signals import signal_batches
from pipeline.core.shards import ReadReport, read_samples
from pipeline.execution.record import write_done
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.report import build_report
from pipeline.stages import filter as filter_stage
from pipeline.stages.context import StageContext
from pipeline.stages.score import ScoreConfig, write_scored_shard


def score_without_ray(ds, with_scores: bool = True) -> None:
    """The score stage's per-shard work, run in-process (the report needs its files, not Ray)."""
    cfg = ScoreConfig(input="pool")
    rng = np.random.default_rng(0)
    for shard in sorted(ds.done_shards()):
        report = ReadReport()
        batches = list(signal_batches(read_samples(ds.shard_file(shard, "tar"), report), shard))
        cols = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        if with_scores:  # a model's scores, made up: the report only reads them
            cols["dfn_score"] = rng.uniform(-0.1, 0.4, len(cols["uid"])).astype(np.float32)
            cols["dfn_score"][~cols["decodable"]] = np.nan
            cfg = ScoreConfig(input="pool", model={"name": "ViT-B-32"}, keep_embeddings=False)
        write_done(ds, shard, write_scored_shard(ds, shard, cols, report.as_dict(), cfg, None), "signals")


def build_run(root: Path):
    clean = [sample(i, size=(80, 60)) for i in range(24)]
    noise = [Sample(clean[0].image, "the very same picture again", "http://web.test/dup.jpg"),
             Sample(jpeg(smooth_image(1, (80, 60)), quality=50), "picture one, re-encoded", "http://web.test/n.jpg"),
             sample(50, size=(10, 10)), sample(51, caption="IMG_0001.JPG"),
             Sample(b"nope", "a broken file", "http://web.test/broken.jpg")]
    ds = write_pool(root, "pool", [clean[:15], clean[15:] + noise])
    score_without_ray(ds)
    stages = {"download": {"output": "pool"}, "score": {"input": "pool"},
              "filter": {"input": "pool", "recipe": "dfn_no_semantic"}}
    recipe = root / "dfn_no_semantic.yaml"
    recipe.write_text("description: basic + top half by dfn_score\nops:\n  - min_image_side: 32\n"
                      "  - drop_generic_captions: true\n  - dedup: {method: exact}\n"
                      "  - dedup: {method: phash, max_hamming: 4}\n  - dfn_score: {top_fraction: 0.5}\n")
    stages["filter"]["recipe"] = str(recipe)
    cfg = parse_pipeline_config({"name": "reportdemo", "root": str(root), "stages": stages}, "r.yaml")
    res = filter_stage.run(StageContext(pipeline=cfg, stage="filter"), cfg.stages["filter"])
    ds.update_manifest("download", {"samples": 31, "ok": 29, "success_rate": 29 / 31, "wall_seconds": 3.2,
                                    "reasons": {"success": 29, "http_404": 2}, "shards": {"done": 2, "total": 2}})
    (root / "clip").mkdir()
    (root / "clip" / "eval.json").write_text(json.dumps({"zeroshot": {"top1": 0.4321, "top5": 0.8765}}))
    (root / "clip" / "train.json").write_text(json.dumps({"steps": 120, "final_loss": 1.234}))
    return cfg, res


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", " ", html)))


def test_report_holds_funnel_numbers_images_plots_and_results(tmp_path):
    cfg, res = build_run(tmp_path)
    url = build_report(cfg)
    assert url == str(tmp_path / "pool" / "report" / "index.html")
    html = Path(url).read_text()
    text = _text(html)
    # the funnel, step by step, with the numbers the filter stage computed
    for step in res["funnel"]:
        assert f"{step['label']} {step['left']} {step['dropped']}" in text, step
    assert [s["left"] for s in res["funnel"]][:3] == [29, 29, 28]
    # thumbnails of real samples, histograms (with the dfn threshold in their legend) and the funnel plot
    assert html.count("data:image/jpeg;base64,") >= 20
    assert html.count("data:image/png;base64,") >= 6
    assert "Borderline dfn_score" in text and "Highest dfn_score" in text and "Lowest dfn_score" in text
    assert "Near-duplicate clusters: dedup(exact)" in text and "Near-duplicate clusters: dedup(phash" in text
    assert "Dropped by min_image_side: 32 (1)" in text and "IMG_0001.JPG" in text
    # other stages' files: the download's reasons and the training results
    assert "http_404" in text and "zeroshot.top1 0.4321" in text and "final_loss 1.234" in text
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", html)


def test_report_of_a_run_that_has_not_started_says_so(tmp_path):
    cfg = parse_pipeline_config({"root": str(tmp_path / "empty"), "stages": {"score": {"input": "pool"}}}, "e.yaml")
    url = build_report(cfg)
    assert "No stage has written a manifest" in Path(url).read_text()


def test_report_without_a_model_shows_signals_and_no_dfn_grids(tmp_path):
    ds = write_pool(tmp_path, "pool", [[sample(i) for i in range(6)]])
    score_without_ray(ds, with_scores=False)
    cfg = parse_pipeline_config({"root": str(tmp_path), "stages": {"score": {"input": "pool"}}}, "n.yaml")
    text = _text(Path(build_report(cfg)).read_text())
    assert "samples scored 6" in text and "model none" in text and "Highest dfn_score" not in text
