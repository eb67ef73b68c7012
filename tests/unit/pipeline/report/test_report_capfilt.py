"""The report's CapFilt sections: the filter checks with their near-miss estimate and best cut, the cut a recipe
used, and what the captioner wrote (distinct captions, per attribute accuracy against chance)."""

from __future__ import annotations

import pandas as pd
from capfilt_testdata import captioned_pool

from pipeline.report.capfilt import sections
from pipeline.report.data import ReportData
from pipeline.synthetic.worlds import get_world


def test_capfilt_sections_show_the_near_misses_the_cut_and_the_captioners_accuracy(tmp_path):
    w = get_world("shapes")
    rows = [(f"u{i}", w.colours[0], w.shapes[i % 2], [f"a {w.colours[0]} {w.shapes[0]}"]) for i in range(4)]
    cfg, ds = captioned_pool(str(tmp_path), rows)
    check = {"estimated_auroc": 0.81, "auroc_shuffled": 0.99, "auroc_near_miss": 0.62, "near_misses_counted": True,
             "pairs": 50, "negatives": 98, "step": 300, "last_step": 500, "platt": {"threshold_score": 0.21},
             "cut": {"probability": 0.734}, "history": [{"step": 300, "estimated_auroc": 0.81}], "warning": None}
    info = {"samples": 4, "captions": {"web": {"judged": 4, "kept": 1, "rejected_fraction": 0.75},
                                       "synthetic": {"judged": 4, "kept": 2, "rejected_fraction": 0.5},
                                       "images_with_caption": 2},
            "capfilt_cut": {"op": "capfilt(min_probability=auto, sources=web+synthetic)", "threshold": 0.734,
                            "rule": "auto", "probability": 0.734, "balanced_accuracy": 0.88,
                            "balanced_accuracy_at_half": 0.8, "web_probability": 0.061, "near_misses": True}}
    sel = pd.DataFrame({"uid": ["u0"], "shard": ["00000"], "key": ["000000000"], "kept": [True], "drop_op": [None],
                        "captions": [[{"text": "a web caption", "source": "web", "score": 0.3, "probability": 0.9,
                                       "kept": True}]]})
    data = ReportData(root=str(tmp_path), dataset=ds, pipeline=cfg, selections={"capfilt_auto": (info, sel)},
                      results={"train_filter/train.json": {"kind": "train-clip", "holdout": check}})
    html = {key: body for key, _, body in sections(data)}
    assert "0.620 (counted)" in html["filter-checks"] and "0.734" in html["filter-checks"]
    body = html["capfilt-capfilt_auto"]
    assert "P(match) &ge; <b>0.734</b>, chosen on the filter's held-out pairs" in body
    assert "at BLIP's 0.5: 0.800" in body
    assert "web captions: P(match) &ge; <b>0.061</b>, the best cut against unrelated captions only" in body
    assert "<b>1</b> distinct captions for 4 images captioned" in body
    assert "<tr><td>colour</td><td>100.0%</td><td>16.7%</td><td class=\"n\">4</td><td>6.0x</td></tr>" in body
    assert "<tr><td>shape</td><td>50.0%</td><td>20.0%</td><td class=\"n\">4</td><td>2.5x</td></tr>" in body
