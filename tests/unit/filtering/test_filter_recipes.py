"""Recipes: the shipped ones load; every mistake names the file, the op and what is known, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from filtering.recipe import RECIPE_DIR, RecipeError, load_recipe, parse_recipe

SIGNALS_WITHOUT_MODEL = {"uid", "key", "shard", "caption", "width", "height", "aspect_ratio", "decodable",
                         "caption_words", "caption_chars", "generic_caption", "generic_reason", "sha256", "phash",
                         "image_bytes"}


@pytest.mark.parametrize("path", sorted(RECIPE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_needs_only_known_signals(path: Path):
    recipe = load_recipe(str(path))
    assert recipe.description and (recipe.ops or path.stem == "none")  # `none` is the raw-pool baseline
    from filtering.capfilt import CALIBRATED, CAPTION_SIGNALS

    recipe.check(SIGNALS_WITHOUT_MODEL | {"dfn_score", "embedding", *CAPTION_SIGNALS, CALIBRATED})


def test_shipped_recipes_are_what_the_issue_asks_for():
    assert {"basic", "dfn", "datacomp_clip_score"} <= {p.stem for p in RECIPE_DIR.glob("*.yaml")}
    basic, dfn = load_recipe("basic"), load_recipe("dfn")
    assert [o.label() for o in dfn.ops[: len(basic.ops)]] == [o.label() for o in basic.ops]
    assert dfn.ops[-1].label() == "dfn_score(top_fraction=0.3)"
    assert [o.label() for o in load_recipe("datacomp_clip_score").ops] == ["dfn_score(top_fraction=0.3)"]


@pytest.mark.parametrize("ops, expect", [
    ([{"dedupe": {"method": "exact"}}], ["my.yaml: ops[0] dedupe: unknown op", "known ops: min_image_side",
                                         "dfn_score"]),
    ([{"min_image_side": 64}, {"clip_score": {"min": 0.2}}], ["ops[1] clip_score: unknown op"]),
    ([{"dedup": {"method": "phash"}}], ["ops[0]", "needs max_hamming"]),
    ([{"dedup": {"method": "exact", "max_hamming": 2}}], ["max_hamming does not apply"]),
    ([{"dedup": {"method": "phash", "max_hamming": 3, "bits": 64}}], ["dedup.bits: unknown key", "accepts: method"]),
    ([{"min_image_side": "big"}], ["ops[0] min_image_side: expected an integer"]),
    ([{"min_image_side": -1}], ["expected a value >= 0"]),
    ([{"drop_generic_captions": "yes"}], ["expected true or false"]),
    ([{"dfn_score": {"top_fraction": 0.3, "min": 0.1}}], ["either top_fraction or min/max"]),
    ([{"dfn_score": 0.3}], ["ops[0] dfn_score: expected a mapping of parameters"]),
    (["min_image_side"], ["ops[0]: expected one `op: parameters` mapping"]),
])
def test_recipe_errors_name_file_op_and_known(ops, expect):
    with pytest.raises(RecipeError) as err:
        parse_recipe({"ops": ops}, "my.yaml", "my")
    for text in expect:
        assert text in str(err.value)


def test_an_explicit_empty_op_list_is_the_none_recipe_but_a_missing_one_is_an_error():
    assert load_recipe("none").ops == [] and load_recipe("none").requires() == set()
    for data in ({}, {"ops": None}, {"ops": {"min_image_side": 64}}):
        with pytest.raises(RecipeError, match=r"my.yaml: ops: expected a list of ops.*`ops: \[\]` keeps"):
            parse_recipe(data, "my.yaml", "my")


def test_an_op_on_a_signal_that_was_not_computed_is_an_error_listing_the_computed_ones():
    recipe = load_recipe("dfn")
    with pytest.raises(RecipeError) as err:
        recipe.check(SIGNALS_WITHOUT_MODEL)
    msg = str(err.value)
    assert "dfn.yaml: ops[6] dedup: needs image embeddings" in msg and "computed signals: aspect_ratio" in msg
    recipe = parse_recipe({"ops": [{"dfn_score": {"min": 0.2}}]}, "r.yaml", "r")
    with pytest.raises(RecipeError, match=r"r.yaml: ops\[0\] dfn_score: needs 'dfn_score'"):
        recipe.check(SIGNALS_WITHOUT_MODEL)


def test_unknown_recipe_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(RecipeError, match="recipes in configs/filters: .*basic"):
        load_recipe("no_such_recipe")
    (tmp_path / "mine.yaml").write_text("ops:\n  - min_caption_words: 3\n")
    assert load_recipe("mine.yaml", base_dir=tmp_path).name == "mine"
    (tmp_path / "typo.yaml").write_text("opps:\n  - min_caption_words: 3\n")
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe(str(tmp_path / "typo.yaml"))
