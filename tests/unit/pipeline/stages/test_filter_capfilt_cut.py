"""The filter stage with `capfilt: {min_probability: auto}`: the cut comes from the calibration the caption stage
judged with (its manifest section: the judge's held-out best cut), and is recorded in the funnel, the selection's
JSON and the stage's result; without a held-out cut the stage refuses, saying what to do."""

from __future__ import annotations

import json

import pytest
from capfilt_testdata import captioned_pool

from filtering.capfilt import CapFiltError
from pipeline.stages import filter as filter_stage
from pipeline.stages.context import StageContext


def _run(tmp_path, calibration: dict | None):
    rows = [(f"u{i}", "red", "circle", ["a red circle"]) for i in range(4)]
    cfg, ds = captioned_pool(str(tmp_path), rows)  # web P(match) 0.5 and synthetic 0.5 on every row
    ds.update_manifest("caption", {"kind": "caption", "caption_filter_id": "sha256:clip", "calibration": calibration})
    recipe = tmp_path / "auto.yaml"
    recipe.write_text("ops:\n  - capfilt: {min_probability: auto}\n")
    stage = filter_stage.CONFIG(kind="filter", input="pool", recipe=str(recipe))
    return filter_stage.run(StageContext(pipeline=cfg, stage="filter"), stage), ds


def test_auto_cuts_where_the_judges_held_out_check_says_and_records_it(tmp_path, capsys):
    cut = {"score": 0.2, "probability": 0.45, "balanced_accuracy": 0.9, "balanced_accuracy_at_half": 0.85}
    res, ds = _run(tmp_path / "low", {"a": 10.0, "b": -2.0, "source": "train_filter/holdout.json", "cut": cut,
                                      "near_misses": True})
    assert res["kept"] == 4 and res["funnel"][-1]["threshold"] == 0.45  # 0.5 >= 0.45: every caption kept
    assert res["capfilt_cut"]["rule"] == "auto" and res["capfilt_cut"]["probability"] == 0.45
    info = json.loads(open(ds.sub("selection", "auto.json")).read())
    assert info["capfilt_cut"]["source"] == "train_filter/holdout.json" and info["capfilt_cut"]["threshold"] == 0.45
    res, _ = _run(tmp_path / "high", {"a": 10.0, "b": -2.0, "cut": {**cut, "probability": 0.6}})
    assert res["kept"] == 0  # 0.5 < 0.6: nothing kept
    # the judge's cut against unrelated captions only (0.4) keeps the web captions; the synthetic ones stay out
    capsys.readouterr()
    res, ds = _run(tmp_path / "web", {"a": 10.0, "b": -2.0, "cut": {**cut, "probability": 0.6},
                                      "cut_vs_unrelated": {**cut, "probability": 0.4}})
    assert res["kept"] == 4 and res["capfilt_cut"]["web_probability"] == 0.4
    counts = json.loads(open(ds.sub("selection", "auto.json")).read())["captions"]
    assert counts["web"]["kept"] == 4 and counts["synthetic"]["kept"] == 0
    assert "web captions P(match) >= 0.400, the best cut against unrelated captions only" in capsys.readouterr().out


def test_auto_without_a_held_out_cut_is_refused(tmp_path):
    with pytest.raises(CapFiltError, match="min_probability: auto needs the judge's best cut"):
        _run(tmp_path, {"a": 10.0, "b": -2.0, "source": "old/holdout.json"})
