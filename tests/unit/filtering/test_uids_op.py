"""The `uids` op: a subset exported from one selection, imported by a recipe, reproduces that selection exactly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_filter_ops import make_pool, run

from filtering.recipe import RecipeError, parse_recipe
from filtering.select import apply_recipe
from pipeline.core.ids import subset_array


def pool():
    rows = []
    for i in range(60):
        rows.append({"uid": hashlib.md5(f"u{i}".encode()).hexdigest(), "width": 20 + 3 * i,
                     "caption_words": 1 + i % 4, "dfn_score": (i * 37 % 60) / 60, "decodable": i % 13 != 5,
                     "sha256": f"sha{i % 50}"})
    return make_pool(rows)


def test_an_exported_subset_reproduces_the_selection_and_its_complement(tmp_path):
    p = pool()
    _, rows = run([{"min_image_side": 60}, {"min_caption_words": 2}, {"dedup": {"method": "exact"}},
                   {"dfn_score": {"top_fraction": 0.5}}], p)
    kept = {r["uid"] for r in rows if r["kept"]}
    assert 5 < len(kept) < 50
    np.save(tmp_path / "subset.npy", subset_array(kept))
    # a relative file is found beside the recipe
    sel = parse_recipe({"ops": [{"uids": {"file": "subset.npy", "keep": True}}]}, str(tmp_path / "r.yaml"), "r")
    rows = apply_recipe(sel, p).table.to_pylist()
    assert {r["uid"] for r in rows if r["kept"]} == kept
    dropped = [r for r in rows if not r["kept"] and r["drop_op"] == "uids"]
    assert dropped and all(r["drop_detail"] == "not in subset.npy" for r in dropped)
    rows = apply_recipe(parse_recipe({"ops": [{"uids": {"file": str(tmp_path / "subset.npy"), "keep": False}}]},
                                     "x.yaml", "x"), p).table.to_pylist()
    decodable_unique = {r["uid"] for r in rows if r["drop_op"] not in ("decodable", "unique_uid")}
    assert {r["uid"] for r in rows if r["kept"]} == decodable_unique - kept


def test_a_missing_or_malformed_subset_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"my.yaml: ops\[0\]: uids.file: .*no such file 'gone.npy'"):
        parse_recipe({"ops": [{"uids": {"file": "gone.npy"}}]}, str(tmp_path / "my.yaml"), "my")
    np.save(tmp_path / "flat.npy", np.arange(3))
    with pytest.raises(RecipeError, match=r"expected a 1-D array of dtype"):
        parse_recipe({"ops": [{"uids": {"file": str(tmp_path / "flat.npy")}}]}, "my.yaml", "my")
