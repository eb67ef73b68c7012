"""`winnow eval` on a caption stage: per attribute, how often the synthetic captions name what the image shows,
against chance, with distinct captions per images captioned; written beside the captions and printed as a row."""

from __future__ import annotations

import json

import pytest
from capfilt_testdata import captioned_pool

from pipeline.cli.evaluate import evaluate_stage
from pipeline.core.config import ConfigError
from pipeline.stages import caption
from pipeline.stages.context import StageContext
from pipeline.synthetic.worlds import get_world


def test_the_caption_stage_is_evaluated_against_the_webs_truth(tmp_path, capsys):
    w = get_world("shapes")
    c, s = w.colours, w.shapes
    rows = [(f"u{i}", c[i % 2], s[i % 3], [f"a {c[i % 2]} {s[0]}"]) for i in range(6)]  # colour right, shape 1 in 3
    cfg, ds = captioned_pool(str(tmp_path), rows)
    res = evaluate_stage(cfg, "caption", "t.yaml")["caption"]
    assert res["attributes"]["colour"]["accuracy"] == 1.0 and res["attributes"]["shape"]["accuracy"] == 2 / 6
    assert res["distinct_captions"] == 2 and res["images_captioned"] == 6
    assert json.loads((tmp_path / "pool" / "captions_eval.json").read_text()) == res
    table = capsys.readouterr().out
    assert "100.0% (chance 16.7%)" in table and "33.3% (chance 20.0%)" in table and "2 distinct / 6 images" in table
    row = caption.eval_row(cfg.stages["caption"], res)
    assert row["shape"].startswith("33.3%") and row["all right"] == "33.3%"


def test_without_a_web_only_the_counts_and_without_captions_an_error(tmp_path):
    cfg, ds = captioned_pool(str(tmp_path / "a"), [("u0", "red", "circle", ["a red circle"])])
    (tmp_path / "a" / "web" / "truth.parquet").unlink()
    res = caption.evaluate(StageContext(pipeline=cfg, stage="caption"), cfg.stages["caption"])
    assert "attributes" not in res and res["distinct_captions"] == 1
    assert caption.eval_row(cfg.stages["caption"], res) == {"captions": "1 distinct / 1 images"}
    empty = cfg.model_copy(update={"root": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="no captions"):
        caption.evaluate(StageContext(pipeline=empty, stage="caption"), empty.stages["caption"])
