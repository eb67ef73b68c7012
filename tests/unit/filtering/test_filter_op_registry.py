"""The filter-op registry refuses what would silently misbehave (a name that shadows a signal column, an op with no
way to take its parameters, a name registered twice), and the known-ops error lists each name once."""

from __future__ import annotations

import pytest

from filtering.ops import NAMED_OPS, SCALAR_PARAMS, MaxAspectRatio, Op, OpRegistryError, build_registry
from filtering.recipe import NUMERIC_SIGNALS, RecipeError, known_ops_text, parse_recipe


class AspectRatio(Op):  # a plausible new op, named like the signal column it reads
    name = "aspect_ratio"
    scalar = (float, 1.0)


class AspectRatioOnPurpose(AspectRatio):
    replaces_signal = "aspect_ratio"


class NoParams(Op):
    name = "no_params"


def test_an_op_named_like_a_signal_column_is_refused_unless_it_says_it_replaces_that_column():
    with pytest.raises(OpRegistryError, match=r"AspectRatio: op name 'aspect_ratio' is also a signal column.*"
                                              r"replaces_signal = 'aspect_ratio'"):
        build_registry([AspectRatio])
    assert build_registry([AspectRatioOnPurpose]) == {"aspect_ratio": AspectRatioOnPurpose}


def test_an_op_takes_exactly_one_kind_of_parameters_and_a_name_once():
    with pytest.raises(OpRegistryError, match="exactly one of `params_model`"):
        build_registry([NoParams])
    with pytest.raises(OpRegistryError, match="already registered by MaxAspectRatio"):
        build_registry([MaxAspectRatio, type("Again", (MaxAspectRatio,), {})])


def test_the_shipped_registry_shadows_no_column_and_derives_the_single_value_ops():
    assert not set(NAMED_OPS) & set(NUMERIC_SIGNALS)
    assert SCALAR_PARAMS == {"min_image_side": (int, 0), "max_aspect_ratio": (float, 1.0),
                             "min_caption_words": (int, 0), "min_caption_chars": (int, 0),
                             "drop_generic_captions": (bool, None)}


def listed(text: str) -> list[str]:
    """The names in a known-ops text: `known ops: a, b; numeric signals as ...: c, d`."""
    return [n.strip() for part in text.split(";") for n in part.rsplit(": ", 1)[-1].split(",")]


def test_the_known_ops_error_lists_each_name_once():
    with pytest.raises(RecipeError) as err:
        parse_recipe({"ops": [{"aspect": 3}]}, "my.yaml", "my")
    names = listed(str(err.value).split("unknown op; ", 1)[1])
    assert len(names) == len(set(names)) and {"aspect_ratio", "max_aspect_ratio", "uids"} <= set(names)
    # an op that replaces a column's threshold is listed as an op, not again as a signal
    names = listed(known_ops_text({**NAMED_OPS, "aspect_ratio": AspectRatioOnPurpose}))
    assert names.count("aspect_ratio") == 1 and len(names) == len(set(names))
