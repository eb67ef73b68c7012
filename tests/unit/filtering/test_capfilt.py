"""CapFilt's per-caption decisions: the `capfilt` op's rules, its per-caption lineage, and the judge/captioner rule."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from filtering.capfilt import CapFiltError, check_distinct, probability, weights_id
from filtering.capfilt_rule import CapFiltParams
from filtering.ops import Pool
from filtering.recipe import RecipeError, parse_recipe
from filtering.select import apply_recipe

LIST_F = pa.list_(pa.float32())


def pool() -> Pool:
    """Four images: web caption + two synthetic captions each, with judge scores and calibrated probabilities."""
    t = pa.table({
        "uid": ["u0", "u1", "u2", "u3"], "shard": ["00000"] * 4, "key": ["k0", "k1", "k2", "k3"],
        "decodable": [True, True, True, False], "decode_error": [None, None, None, "UnidentifiedImageError"],
        "caption": ["a red circle", "IMG_2041.jpg", "a blue square", "a cat"],
        "web_score": pa.array([0.30, 0.05, 0.12, None], pa.float32()),
        "web_probability": pa.array([0.90, 0.10, 0.40, None], pa.float32()),
        "synthetic_captions": [["a red circle on grey", "a green star"], ["a small blue cross", "a blue cross"],
                               ["a yellow heart", "a red tree"], []],
        "synthetic_scores": pa.array([[0.28, 0.02], [0.25, 0.22], [0.04, 0.03], []], LIST_F),
        "synthetic_probabilities": pa.array([[0.85, 0.05], [0.70, 0.60], [0.08, 0.06], []], LIST_F),
        "caption_filter": ["sha256:judge"] * 4,
    })
    return Pool(t)


def recipe(*ops) -> object:
    return parse_recipe({"ops": list(ops)}, "test.yaml", "t")


def captions_of(sel, uid: str) -> list[dict]:
    rows = sel.table.to_pylist()
    return next(r["captions"] for r in rows if r["uid"] == uid)


def test_min_probability_keeps_matching_captions_and_drops_images_left_with_none():
    sel = apply_recipe(recipe({"capfilt": {"min_probability": 0.5}}), pool())
    kept = dict(zip(sel.table.column("uid").to_pylist(), sel.table.column("kept").to_pylist(), strict=True))
    assert kept == {"u0": True, "u1": True, "u2": False, "u3": False}
    u0 = captions_of(sel, "u0")
    assert [(c["text"], c["source"], c["kept"]) for c in u0] == [("a red circle", "web", True), (
        "a red circle on grey", "synthetic", True), ("a green star", "synthetic", False)]
    assert u0[2]["drop_op"] == "capfilt" and u0[0]["drop_op"] is None and u0[0]["judge"] == "sha256:judge"
    # the generic web caption is dropped, both synthetic ones kept: the image survives on synthetic captions
    u1 = captions_of(sel, "u1")
    assert [c["source"] for c in u1 if c["kept"]] == ["synthetic", "synthetic"]
    assert [c["source"] for c in u1 if not c["kept"]] == ["web"]
    row2 = sel.table.to_pylist()[2]
    assert row2["drop_op"] == "capfilt" and row2["drop_value"] == pytest.approx(0.40)  # its best probability
    assert row2["drop_detail"] == "no caption kept of 3"
    assert sel.table.to_pylist()[3]["drop_op"] == "decodable"  # dropped before: no caption was ever judged
    step = sel.funnel[-1]
    assert step["op"] == "capfilt" and step["dropped"] == 1 and step["threshold"] == 0.5
    assert step["signal"] == "caption_probability"


def test_top_fraction_is_over_every_candidate_caption_of_the_pool():
    sel = apply_recipe(recipe({"capfilt": {"top_fraction": 0.5}}), pool())
    verdicts = [c for r in sel.table.to_pylist() for c in r["captions"]]
    assert len(verdicts) == 9  # u3 did not decode: nothing to judge
    kept = sorted(c["score"] for c in verdicts if c["kept"])
    assert len(kept) == 4 and kept[0] == pytest.approx(0.22)  # floor(0.5 * 9) = 4 best scores
    assert sel.funnel[-1]["signal"] == "caption_score"


def test_sources_and_raw_score_rules():
    web_only = apply_recipe(recipe({"capfilt": {"min_score": 0.1, "sources": ["web"]}}), pool())
    assert all(c["source"] == "web" for r in web_only.table.to_pylist() for c in r["captions"])
    assert web_only.table.column("kept").to_pylist() == [True, False, True, False]
    assert CapFiltParams().min_probability == 0.5  # no rule given: BLIP's P(match) >= 0.5
    with pytest.raises(RecipeError, match="give one of min_probability, top_fraction, min_score"):
        recipe({"capfilt": {"min_probability": 0.5, "min_score": 0.2}})
    with pytest.raises(RecipeError, match="capfilt.sources"):
        recipe({"capfilt": {"sources": ["alt_text"]}})


def test_a_recipe_with_capfilt_needs_the_caption_stage_and_a_calibrated_filter():
    r = recipe({"capfilt": {"min_probability": 0.5}})
    with pytest.raises(RecipeError, match="caption_calibrated"):
        r.check({"uid", "web_score", "web_probability", "synthetic_captions", "synthetic_scores",
                 "synthetic_probabilities", "caption_filter"})
    recipe({"capfilt": {"min_score": 0.2}}).check({"caption", "web_score", "web_probability", "synthetic_captions",
                                                  "synthetic_scores", "synthetic_probabilities", "caption_filter"})


def test_probability_is_itm_for_blip_and_platt_for_a_cosine():
    s = np.array([0.0, 0.2, 0.4])
    assert probability(s, None, "blip").tolist() == s.tolist()
    assert np.isnan(probability(s, None, "clip")).all()
    p = probability(s, {"a": 20.0, "b": -4.0}, "clip")
    assert p[1] == pytest.approx(0.5) and p[0] < 0.05 < 0.95 < p[2]


def test_the_judge_may_not_be_the_captioner(tmp_path):
    a, b = tmp_path / "coca.pt", tmp_path / "clip.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    copy = tmp_path / "copy.pt"
    copy.write_bytes(a.read_bytes())
    assert weights_id(str(a)) == weights_id(str(copy)) != weights_id(str(b))
    check_distinct(weights_id(str(a)), weights_id(str(b)), str(a), str(b))
    with pytest.raises(CapFiltError, match=r"rejected 8% of them.*same weights"):
        check_distinct(weights_id(str(a)), weights_id(str(copy)), str(a), str(copy))
    assert weights_id("openai", "ViT-B-32") == "tag:ViT-B-32/openai"


def test_auto_cuts_at_the_judges_held_out_best_cut_and_says_so():
    cal = {"a": 20.0, "b": -4.0, "source": "runs/x/train_filter/holdout.json", "near_misses": True,
           "cut": {"score": 0.23, "probability": 0.65, "balanced_accuracy": 0.91, "balanced_accuracy_at_half": 0.88}}
    p = pool()
    p.context["caption_calibration"] = cal
    r = recipe({"capfilt": {"min_probability": "auto"}})
    sel = apply_recipe(r, p)
    step = sel.funnel[-1]
    assert step["threshold"] == 0.65 and step["signal"] == "caption_probability" and "auto" in step["label"]
    kept = {c["text"] for row in sel.table.to_pylist() for c in row["captions"] if c["kept"]}
    assert kept == {"a red circle", "a red circle on grey", "a small blue cross"}  # 0.60 is under 0.65 now
    assert r.ops[0].rule == {"rule": "auto", "probability": 0.65, "score": 0.23, "balanced_accuracy": 0.91,
                             "balanced_accuracy_at_half": 0.88, "web_probability": 0.65, "near_misses": True,
                             "source": "runs/x/train_filter/holdout.json"}
    # with the judge's cut against unrelated captions only, web captions are cut there, synthetic ones as before
    p = pool()
    p.context["caption_calibration"] = {**cal, "cut_vs_unrelated": {"score": 0.1, "probability": 0.35}}
    r = recipe({"capfilt": {"min_probability": "auto"}})
    sel = apply_recipe(r, p)
    kept = {(c["text"], c["source"]) for row in sel.table.to_pylist() for c in row["captions"] if c["kept"]}
    assert kept == {("a red circle", "web"), ("a blue square", "web"), ("a red circle on grey", "synthetic"),
                    ("a small blue cross", "synthetic")}  # web 0.40 >= 0.35 kept; synthetic 0.60 < 0.65 not
    assert r.ops[0].rule["web_probability"] == 0.35 and sel.funnel[-1]["threshold"] == 0.65
    # a calibration without a held-out cut (an old holdout.json, or none): refused, with what to do
    for missing in (None, {"a": 20.0, "b": -4.0, "source": "old/holdout.json"}):
        p = pool()
        p.context["caption_calibration"] = missing
        with pytest.raises(CapFiltError, match="min_probability: auto needs the judge's best cut"):
            apply_recipe(recipe({"capfilt": {"min_probability": "auto"}}), p)
    with pytest.raises(RecipeError, match="within"):
        recipe({"capfilt": {"min_probability": 1.5}})
    with pytest.raises(RecipeError):
        recipe({"capfilt": {"min_probability": "best"}})
