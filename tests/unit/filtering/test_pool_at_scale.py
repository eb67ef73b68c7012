"""The filter's vectorised paths for pools of millions give exactly what the plain ones give: the top-fraction
threshold, hamming pairs at any band count, equal-value pairs, string codes, the dedup priority order, the first row
of each uid, phash parsing, and releasing columns."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from bench.scale_pool import shard_table
from filtering import dedup
from filtering.images import phash_to_uint64
from filtering.ops import Pool, top_fraction_threshold
from filtering.ops.base import fixed_width_hash
from filtering.recipe import parse_recipe
from filtering.select import _unique_uid, apply_recipe


def sorted_threshold(scores: np.ndarray, fraction: float) -> float:
    """The definition: the k-th highest over the whole scored pool by a full sort."""
    s = np.sort(scores[~np.isnan(scores)])[::-1]
    if len(s) == 0 or fraction <= 0:
        return math.inf
    k = max(1, int(math.floor(fraction * len(s) + 1e-9)))
    return float(s[min(k, len(s)) - 1])


@pytest.mark.parametrize("fraction", [0.0, 1e-6, 0.01, 0.3, 0.5, 0.999, 1.0])
def test_top_fraction_threshold_is_the_full_sorts_kth_highest(fraction):
    rng = np.random.default_rng(1)
    scores = rng.normal(0.25, 0.08, 50_001)
    scores[rng.random(len(scores)) < 0.05] = np.nan
    scores[:5000] = np.round(scores[:5000], 2)  # ties at the boundary
    assert top_fraction_threshold(scores, fraction) == sorted_threshold(scores, fraction)


def brute_hamming(h: np.ndarray, r: int) -> set[tuple[int, int, int]]:
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= r, k=1))
    return set(zip(i.tolist(), j.tolist(), d[i, j].tolist(), strict=True))


@pytest.mark.parametrize("bands", [None, 6, 7, 8])
def test_hamming_pairs_are_the_exact_set_whatever_the_band_count(bands, monkeypatch):
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**63, 1500, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    copies = base[rng.integers(0, len(base), 500)]
    for _ in range(3):  # 0-3 flipped bits each
        copies ^= np.where(rng.random(500) < 0.8, np.uint64(1) << rng.integers(0, 64, 500).astype(np.uint64), 0)
    h = np.concatenate([base, copies, base[:20] ^ np.uint64(0b11111)])  # and some exactly 5 bits away
    if bands is not None:
        monkeypatch.setattr(dedup, "_band_count", lambda n, r, bits=64: bands)
    i, j, d = dedup.hamming_pairs(h, 4)
    assert set(zip(i.tolist(), j.tolist(), d.astype(int).tolist(), strict=True)) == brute_hamming(h, 4)
    assert list(zip(i, j, strict=True)) == sorted(zip(i, j, strict=True))


def test_band_count_grows_with_the_pool():
    assert dedup._band_count(1000, 4) == 5  # small pools: the plain pigeonhole split
    assert dedup._band_count(12_800_000, 4) == 7  # DataComp small: 35 keys of 27 bits, not 5 of 13
    assert dedup._band_count(10, 0) == 1


def test_pairs_in_groups_packed_sort_and_argsort_agree():
    values = np.random.default_rng(3).integers(0, 300, 2000)
    packed = dedup._pairs_in_groups(values)  # integers: value and row packed into one sort
    plain = dedup._pairs_in_groups(values.astype(str).astype(object))  # strings: the argsort path
    assert set(zip(*packed, strict=True)) == set(zip(*plain, strict=True))
    assert len(packed[0]) == sum(c * (c - 1) // 2 for c in np.bincount(values))


def test_codes_group_and_order_strings_as_python_does():
    words = ["b", "a", None, "é", "ab", "a", "Z"]
    pool = Pool(pa.table({"w": pa.chunked_array([pa.array(words[:3]), pa.array(words[3:])])}))
    ordered, plain = pool.codes("w"), pool.codes("w", ordered=False)
    for codes in (ordered, plain):
        for x in range(len(words)):
            for y in range(len(words)):
                assert (codes[x] == codes[y]) == (words[x] == words[y])
    present = [i for i, w in enumerate(words) if w is not None]
    assert sorted(present, key=lambda i: (words[i], i)) == sorted(present, key=lambda i: (ordered[i], i))
    assert ordered[2] == -1


def test_fixed_width_hash_is_exact_or_declines():
    digests = pa.chunked_array([pa.array([f"{i % 700:032x}" for i in range(1000)]), pa.array(["0" * 32])])
    codes = fixed_width_hash(digests)
    strings = digests.to_pylist()
    first = {}
    for c, s in zip(codes.tolist(), strings, strict=True):
        assert first.setdefault(c, s) == s
    assert len(set(codes.tolist())) == len(set(strings))
    assert fixed_width_hash(pa.chunked_array([pa.array(["abcdefgh", "abc"])])) is None  # mixed lengths
    assert fixed_width_hash(pa.chunked_array([pa.array(["abcdefgh", None])])) is None  # nulls
    assert fixed_width_hash(pa.chunked_array([pa.array(["abcdef"])])) is None  # not a multiple of 8 bytes


def test_priority_order_by_equals_one_lexsort_of_all_three_keys():
    rng = np.random.default_rng(4)
    n = 3000
    uids = np.array([f"u{v:03d}" for v in rng.integers(0, 400, n)], dtype=object)  # repeated uids too
    score = np.round(rng.random(n), 1)
    score[rng.random(n) < 0.1] = np.nan
    pixels = rng.integers(1, 4, n).astype(float)
    pixels[rng.random(n) < 0.1] = np.nan
    want = np.lexsort((uids.astype(str), -np.nan_to_num(pixels, nan=0.0),
                       np.where(np.isnan(score), np.inf, -score)))
    assert dedup.priority_order(uids, score, pixels).tolist() == want.tolist()
    distinct = rng.random(n)  # scores that rarely tie: uids are fetched only for the rows that do
    distinct[:300] = 0.5
    asked = []
    got = dedup.priority_order_by(n, distinct, pixels, lambda rows: asked.append(len(rows)) or uids[rows])
    assert got.tolist() == np.lexsort((uids.astype(str), -np.nan_to_num(pixels, nan=0.0), -distinct)).tolist()
    assert 0 < asked[0] <= 300


def python_unique_uid(uids, shards, keys):
    """The rule, written plainly: a uid's first row in (shard, key) order stays."""
    first, detail = {}, [None] * len(uids)
    for i in sorted(range(len(uids)), key=lambda i: (shards[i], keys[i], i)):
        j = first.setdefault(uids[i], i)
        if j != i:
            detail[i] = f"{shards[j]}/{keys[j]}"
    return detail


@pytest.mark.parametrize("shuffled", [False, True])
def test_unique_uid_keeps_each_uids_first_row_in_shard_key_order(shuffled):
    rng = np.random.default_rng(5)
    n = 2000
    uids = [f"{v:032x}" for v in rng.integers(0, 1500, n)]
    shards = [f"{v:05d}" for v in np.sort(rng.integers(0, 5, n))]
    keys = [f"{v:09d}" for v in range(n)]
    if shuffled:
        perm = rng.permutation(n)
        uids, shards, keys = ([x[i] for i in perm] for x in (uids, shards, keys))
    drops = _unique_uid(Pool(pa.table({"uid": uids, "shard": shards, "key": keys})))
    want = python_unique_uid(uids, shards, keys)
    assert drops.detail.tolist() == want
    assert drops.mask.tolist() == [d is not None for d in want]


def test_phash_parsing_matches_int():
    rng = np.random.default_rng(6)
    values = rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    hexes = [f"{int(v):016x}" for v in values]
    hexes[7] = hexes[7].upper()
    assert phash_to_uint64(hexes).tolist() == [int(h, 16) for h in hexes]
    assert phash_to_uint64(pa.chunked_array([pa.array(hexes[:3]), pa.array(hexes[3:])])).tolist() == \
        [int(h, 16) for h in hexes]
    assert phash_to_uint64(["ff", "0a"]).tolist() == [255, 10]  # other lengths: the plain path


def test_releasing_columns_changes_nothing_in_the_selection():
    table = pa.concat_tables([shard_table(i, 6000, seed=3, rows=2000) for i in range(3)])
    recipe = parse_recipe({"ops": [{"min_image_side": 32}, {"min_caption_words": 2},
                                   {"drop_generic_captions": True}, {"dedup": {"method": "exact"}},
                                   {"dedup": {"method": "phash", "max_hamming": 4}},
                                   {"dfn_score": {"top_fraction": 0.3}}]}, "test", "test")
    kept = apply_recipe(recipe, Pool(table))
    pool = Pool(table)
    released = apply_recipe(parse_recipe(recipe.raw and {"ops": recipe.raw}, "test", "test"), pool, release=True)
    assert released.table.equals(kept.table) and released.funnel == kept.funnel
    assert "sha256" not in pool.table.column_names and "phash" not in pool.table.column_names
    assert {step["op"] for step in kept.funnel if step["dropped"]} >= {"unique_uid", "decodable", "dedup"}
