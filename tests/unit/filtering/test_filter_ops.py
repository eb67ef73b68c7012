"""Each filter op on hand-made signals: what it drops, the value it records, and ties at a fraction boundary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from filtering.ops import Pool, top_fraction_threshold
from filtering.recipe import parse_recipe
from filtering.select import apply_recipe
from filtering.signals import signals_schema


def make_pool(rows: list[dict], embeddings=None) -> Pool:
    """A signals table from partial rows; unspecified signals get harmless defaults."""
    schema = signals_schema(with_model=True)
    full = []
    for i, r in enumerate(rows):
        base = {"uid": f"u{i:03d}", "key": f"{i:09d}", "shard": "00000", "url": None, "caption": "a red car",
                "image_ext": "jpg", "image_bytes": 1000, "width": 100, "height": 80, "aspect_ratio": 1.25,
                "decodable": True, "decode_error": None, "caption_chars": 9, "caption_words": 3,
                "generic_caption": False, "generic_reason": None, "sha256": f"sha{i}", "phash": f"{i * 0x1111:016x}",
                "dfn_score": 0.5}
        base.update(r)
        full.append(base)
    return Pool(pa.Table.from_pylist(full, schema=schema), embeddings)


def run(ops: list, pool: Pool):
    sel = apply_recipe(parse_recipe({"ops": ops}, "test.yaml", "test"), pool)
    return sel, sel.table.to_pylist()


def test_min_image_side_drops_small_and_records_the_side():
    pool = make_pool([{"width": 100, "height": 80}, {"width": 500, "height": 63}, {"width": 64, "height": 64}])
    sel, rows = run([{"min_image_side": 64}], pool)
    assert [r["kept"] for r in rows] == [True, False, True]
    assert rows[1]["drop_op"] == "min_image_side" and rows[1]["drop_value"] == 63
    assert [f["left"] for f in sel.funnel] == [3, 3, 3, 2]


def test_max_aspect_ratio_and_caption_length_ops():
    pool = make_pool([{"aspect_ratio": 3.0}, {"aspect_ratio": 3.5}, {"caption_words": 1}, {"caption_chars": 4}])
    _, rows = run([{"max_aspect_ratio": 3.0}, {"min_caption_words": 2}, {"min_caption_chars": 5}], pool)
    assert [(r["kept"], r["drop_op"]) for r in rows] == [
        (True, None), (False, "max_aspect_ratio"), (False, "min_caption_words"), (False, "min_caption_chars")]
    assert rows[1]["drop_value"] == pytest.approx(3.5) and rows[2]["drop_value"] == 1


def test_generic_captions_record_the_reason():
    pool = make_pool([{"generic_caption": True, "generic_reason": "file_name"}, {}])
    _, rows = run([{"drop_generic_captions": True}], pool)
    assert rows[0]["drop_op"] == "drop_generic_captions" and rows[0]["drop_detail"] == "file_name"
    assert rows[1]["kept"]
    _, rows = run([{"drop_generic_captions": False}], pool)
    assert all(r["kept"] for r in rows)


def test_undecodable_and_repeated_uids_are_dropped_before_the_recipe():
    pool = make_pool([{"uid": "same"}, {"uid": "same"}, {"decodable": False, "decode_error": "OSError: truncated"}])
    sel, rows = run([{"min_caption_words": 0}], pool)
    assert rows[1]["drop_op"] == "unique_uid" and rows[1]["drop_detail"] == "00000/000000000"
    assert rows[2]["drop_op"] == "decodable" and rows[2]["drop_detail"] == "OSError: truncated"
    assert [f["op"] for f in sel.funnel] == ["pool", "unique_uid", "decodable", "min_caption_words"]
    assert [f["left"] for f in sel.funnel] == [3, 2, 1, 1]


def test_the_empty_recipe_keeps_every_decodable_sample_whatever_its_signals():
    pool = make_pool([{"caption_words": 0, "generic_caption": True, "dfn_score": -0.9}, {"width": 2, "height": 2},
                      {"sha256": "sha0"}, {"decodable": False, "decode_error": "OSError: truncated"}])
    sel, rows = run([], pool)
    assert [r["kept"] for r in rows] == [True, True, True, False]
    assert [f["op"] for f in sel.funnel] == ["pool", "unique_uid", "decodable"] and sel.kept == 3


def test_top_fraction_keeps_ties_at_the_boundary():
    # 10 scored samples, top 0.3 -> k = 3; the 3rd best is 0.8 and two more tie with it: all four 0.8s pass.
    scores = [0.9, 0.85, 0.8, 0.8, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2]
    pool = make_pool([{"dfn_score": s} for s in scores])
    sel, rows = run([{"dfn_score": {"top_fraction": 0.3}}], pool)
    assert [r["kept"] for r in rows] == [True] * 6 + [False] * 4
    assert sel.funnel[-1]["threshold"] == pytest.approx(0.8) and sel.funnel[-1]["signal"] == "dfn_score"
    assert rows[6]["drop_value"] == pytest.approx(0.5)


def test_top_fraction_is_over_the_whole_scored_pool_not_what_is_left():
    # Earlier ops remove the two best samples; the cut is still the pool's top 60% (>= 0.7), so only one passes.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    pool = make_pool([{"dfn_score": s, "width": 10 if i < 2 else 100} for i, s in enumerate(scores)])
    _, rows = run([{"min_image_side": 50}, {"dfn_score": {"top_fraction": 0.6}}], pool)
    assert [r["kept"] for r in rows] == [False, False, True, False, False]


def test_top_fraction_threshold_edges():
    s = np.array([0.1, 0.2, np.nan, 0.3])
    assert top_fraction_threshold(s, 1.0) == pytest.approx(0.1)  # NaN is not part of the scored pool
    assert top_fraction_threshold(s, 0.0) == np.inf
    assert top_fraction_threshold(s, 0.01) == pytest.approx(0.3)  # a positive fraction keeps at least one
    assert top_fraction_threshold(np.array([0.5] * 4), 0.5) == pytest.approx(0.5)


def test_min_and_max_thresholds_on_any_numeric_signal():
    pool = make_pool([{"dfn_score": 0.1}, {"dfn_score": 0.3}, {"dfn_score": None}, {"image_bytes": 10**7}])
    _, rows = run([{"dfn_score": {"min": 0.25}}], pool)
    assert [r["kept"] for r in rows] == [False, True, False, True]  # a missing score does not pass a cut
    _, rows = run([{"image_bytes": {"max": 10**6}}], pool)
    assert [r["kept"] for r in rows] == [True, True, True, False]


def test_exact_dedup_keeps_the_highest_score_then_smallest_uid():
    pool = make_pool([{"sha256": "A", "dfn_score": 0.2}, {"sha256": "A", "dfn_score": 0.9}, {"sha256": "B"},
                      {"sha256": "C", "uid": "z"}, {"sha256": "C", "uid": "a"}])
    _, rows = run([{"dedup": {"method": "exact"}}], pool)
    assert [r["kept"] for r in rows] == [False, True, True, False, True]
    assert rows[0]["drop_detail"] == "u001" and rows[0]["drop_value"] == 0
    assert rows[3]["drop_detail"] == "a"


def test_phash_dedup_finds_planted_near_duplicates_only():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    near = base[:5] ^ np.uint64(0b1011)  # 3 bits flipped: near copies of the first five
    far = base[5:8] ^ np.uint64(0b11111)  # 5 bits flipped: not near at max_hamming 4
    hashes = np.concatenate([base, near, far])
    pool = make_pool([{"phash": f"{int(h):016x}", "dfn_score": 0.9 if i < 50 else 0.1} for i, h in enumerate(hashes)])
    sel, rows = run([{"dedup": {"method": "phash", "max_hamming": 4}}], pool)
    dropped = [i for i, r in enumerate(rows) if not r["kept"]]
    assert dropped == [50, 51, 52, 53, 54]
    assert [rows[i]["drop_detail"] for i in dropped] == [f"u{i:03d}" for i in range(5)]
    assert all(rows[i]["drop_value"] == 3 for i in dropped)


def test_phash_dedup_on_a_chain_keeps_ends_apart():
    # a - b - c with a~b and b~c but a far from c: b (lowest priority) goes, a and c both stay.
    pool = make_pool([{"phash": "0000000000000000", "dfn_score": 0.9}, {"phash": "000000000000000f", "dfn_score": 0.1},
                      {"phash": "00000000000000ff", "dfn_score": 0.8}])
    _, rows = run([{"dedup": {"method": "phash", "max_hamming": 4}}], pool)
    assert [r["kept"] for r in rows] == [True, False, True]


def test_semantic_dedup_uses_embeddings_and_representative_order():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(6, 16)).astype(np.float32)
    emb[3] = emb[0] + 0.01 * rng.normal(size=16)  # a near copy of 0 with a higher score: 3 stays, 0 goes
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = make_pool([{"dfn_score": 0.5 if i != 3 else 0.7} for i in range(6)], emb.astype(np.float16))
    _, rows = run([{"dedup": {"method": "semantic", "min_cosine": 0.95}}], pool)
    assert [r["kept"] for r in rows] == [False, True, True, True, True, True]
    assert rows[0]["drop_detail"] == "u003" and rows[0]["drop_value"] > 0.99


def test_funnel_counts_each_op_in_order():
    pool = make_pool([{"width": 10}, {"caption_words": 1}, {"sha256": "X"}, {"sha256": "X", "dfn_score": 0.1}, {}])
    sel, _ = run([{"min_image_side": 32}, {"min_caption_words": 2}, {"dedup": {"method": "exact"}}], pool)
    assert [(f["op"], f["left"], f["dropped"]) for f in sel.funnel] == [
        ("pool", 5, 0), ("unique_uid", 5, 0), ("decodable", 5, 0), ("min_image_side", 4, 1),
        ("min_caption_words", 3, 1), ("dedup", 2, 1)]
    assert sel.kept == 2
