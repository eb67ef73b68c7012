"""A pool larger than the report's sample is shown from a seeded sample of whole shards, and the page says so; the
funnel's counts stay those of the whole pool."""

from __future__ import annotations

import re

from bench.scale_pool import write_pool
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.report import render
from pipeline.report.data import ReportData, choose_sample
from pipeline.stages import filter as filter_stage
from pipeline.stages.context import StageContext


def filtered_pool(root):
    write_pool(str(root), 3000, seed=1, rows_per_shard=500)  # 6 scored shards, no images
    recipe = root / "cut.yaml"
    recipe.write_text("ops:\n  - min_image_side: 32\n  - dedup: {method: exact}\n  - dfn_score: {top_fraction: 0.3}\n")
    cfg = parse_pipeline_config({"name": "sampled", "root": str(root),
                                 "stages": {"filter": {"kind": "filter", "input": "pool", "recipe": str(recipe)}}},
                                "s.yaml")
    filter_stage.run(StageContext(pipeline=cfg, stage="filter"), cfg.stages["filter"])
    return cfg


def test_a_pool_over_the_sample_size_is_sampled_by_whole_shards_and_says_so(tmp_path):
    cfg = filtered_pool(tmp_path)
    data = ReportData.load(str(tmp_path), "pool", pipeline=cfg, sample_rows=1000)
    assert data.sampled and data.sample.total_rows == 3000 and data.sample.total_shards == 6
    assert len(data.sample.shards) == 2 and len(data.signals) == 1000
    info, sel = data.selections["cut"]
    assert set(sel["shard"]) == set(data.sample.shards) and len(sel) == 1000  # the sampled shards' rows only
    html = render(data)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "drawn from a sample of 1,000 of 3,000 samples (2 of 6 scored shards, chosen at random)" in text
    assert info["samples"] == 3000 and f"{info['kept']}" in text  # the funnel: the whole pool's counts
    again = choose_sample(data.dataset, 1000)
    assert again.shards == data.sample.shards  # seeded: the same sample every time


def test_a_pool_within_the_sample_size_is_read_whole_and_says_nothing(tmp_path):
    cfg = filtered_pool(tmp_path)
    data = ReportData.load(str(tmp_path), "pool", pipeline=cfg)
    assert not data.sampled and len(data.signals) == 3000 and data.sample_note() == ""
    assert "drawn from a sample" not in render(data)
