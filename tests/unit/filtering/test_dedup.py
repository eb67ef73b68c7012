"""Semantic dedup at scale: the list search against the exact one, determinism, the survivor rule, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from filtering import dedup
from filtering.ops import Pool
from filtering.recipe import RecipeError, parse_recipe

MIN_COSINE = 0.95
N = 12_000  # over dedup.EXACT_MAX_ROWS: the op takes the list search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int = N, dim: int = 32, copies: int = 1200, seed: int = 0):
    """n rows around 40 concepts, the last `copies` rows near copies (cosine ~0.93 to 1) of earlier rows.

    Returns (embeddings, source of each copy).
    """
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((40, dim)))
    base = unit(centers[rng.integers(0, 40, n - copies)] + rng.standard_normal((n - copies, dim)) / np.sqrt(dim))
    src = rng.integers(0, n - copies, copies)
    t = rng.uniform(0, 0.4, copies)[:, None]
    return np.concatenate([base, unit(base[src] + t * rng.standard_normal((copies, dim)) / np.sqrt(dim))]), src


def dedup_op(**params):
    return parse_recipe({"ops": [{"dedup": {"method": "semantic", "min_cosine": MIN_COSINE, **params}}]},
                        "t.yaml", "t").ops[0]


def pool_of(emb: np.ndarray, score: np.ndarray, uids: list[str] | None = None) -> Pool:
    n = len(emb)
    table = pa.table({"uid": uids or [f"u{i:05d}" for i in range(n)], "dfn_score": score,
                      "width": np.full(n, 64), "height": np.full(n, 64)})
    return Pool(table, emb.astype(np.float16))


def decisions(op, pool: Pool) -> dict[str, tuple[str, float]]:
    """uid of every dropped row -> (uid of the kept copy that dropped it, cosine)."""
    drops = op.apply(pool, np.ones(pool.n, bool))
    uids = pool.strings("uid")
    return {uids[k]: (drops.detail[k], drops.value[k]) for k in np.flatnonzero(drops.mask)}


def exact_drops(emb: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = dedup.priority_order(np.array([f"u{i:05d}" for i in range(len(emb))], dtype=object), score)
    i, j, v = dedup.cosine_pairs(emb, MIN_COSINE)
    return dedup.greedy_keep(len(emb), i, j, v, order)[0]


def test_list_search_agrees_with_the_exact_one_on_clustered_planted_copies():
    emb, _ = planted(dim=16)
    score = np.random.default_rng(1).uniform(size=len(emb))
    # 120 lists of ~100 rows: many more list boundaries than the default, so straddling pairs are common
    ei, ej, _ = dedup.cosine_pairs(emb, MIN_COSINE)
    exact_pairs = set(zip(np.minimum(ei, ej).tolist(), np.maximum(ei, ej).tolist(), strict=True))
    own_list, _, _ = dedup.semantic_pairs(emb, MIN_COSINE, clusters=120, nprobe=1, exact_max_rows=0)
    assert len(own_list) / len(exact_pairs) < 0.97  # comparing within one's own list only (SemDeDup) misses pairs
    i, j, v = dedup.semantic_pairs(emb, MIN_COSINE, clusters=120, exact_max_rows=0)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(exact_pairs) > 800
    assert found <= exact_pairs  # never a pair under the threshold
    assert len(found) / len(exact_pairs) >= 0.99
    np.testing.assert_allclose(v, np.einsum("nd,nd->n", emb[i], emb[j]), atol=1e-5)  # the true cosine

    exact = exact_drops(emb, score)
    ivf = np.zeros(len(emb), bool)
    got = decisions(dedup_op(clusters=120), pool_of(emb, score))
    ivf[[int(u[1:]) for u in got]] = True
    assert exact.sum() > 600
    assert (exact & ivf).sum() / exact.sum() >= 0.99
    assert (exact & ivf).sum() / ivf.sum() >= 0.99


def test_planted_copies_are_dropped_in_favour_of_the_higher_score():
    emb, src = planted(copies=300)
    n = len(emb)
    cos = np.einsum("nd,nd->n", emb[src], emb[n - 300:])
    score = np.full(n, 0.5)
    score[src] = 0.9  # every source outranks its copies
    got = decisions(dedup_op(), pool_of(emb, score))
    near = np.flatnonzero(cos >= MIN_COSINE + 1e-4)  # clear of the threshold (float16 storage moves cosines)
    assert len(near) > 150
    for k in near:
        kept, value = got[f"u{n - 300 + k:05d}"]
        assert kept == f"u{src[k]:05d}" or got.get(kept) is None  # a kept row, usually the source itself
        assert value >= MIN_COSINE
    assert sum(got[f"u{n - 300 + k:05d}"][0] == f"u{src[k]:05d}" for k in near) >= 0.95 * len(near)
    assert all(f"u{s:05d}" not in got for s in src)  # no source is dropped: nothing near it scores higher
    assert all(kept not in got for kept, _ in got.values())  # every drop names a sample that was kept


def test_same_rows_give_the_same_drops_in_any_order():
    emb, _ = planted(dim=16)
    score = np.random.default_rng(2).uniform(size=len(emb))
    op = dedup_op(clusters=120, nprobe=2)  # few probes: which pairs are found depends on the lists k-means drew
    first = decisions(op, pool_of(emb, score))
    assert len(first) > 600
    assert decisions(op, pool_of(emb, score)) == first
    perm = np.random.default_rng(3).permutation(len(emb))
    uids = [f"u{i:05d}" for i in perm]
    assert decisions(op, pool_of(emb[perm], score[perm], uids)) == first  # same drops, kept copies and cosines


def test_a_broken_embedding_is_near_nothing():
    emb, src = planted()
    score = np.random.default_rng(4).uniform(size=len(emb))
    emb[src[:20]] = np.nan  # sources of planted copies: their copies lose that pair, nothing else changes
    got = decisions(dedup_op(), pool_of(emb, score))
    broken = {f"u{k:05d}" for k in src[:20]}
    assert len(got) > 600
    assert not broken & set(got) and not broken & {kept for kept, _ in got.values()}
    assert all(value >= MIN_COSINE for _, value in got.values())


def test_thread_count_does_not_change_the_pairs():
    import faiss  # k-means and list ranking run on faiss's threads; the products on numpy's BLAS as configured

    emb, _ = planted()
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = dedup.semantic_pairs(emb, MIN_COSINE, clusters=120, exact_max_rows=0)
        faiss.omp_set_num_threads(max(2, threads))
        many = dedup.semantic_pairs(emb, MIN_COSINE, clusters=120, exact_max_rows=0)
    finally:
        faiss.omp_set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


def test_small_pools_take_the_exact_path():
    emb, _ = planted(2000, copies=200)
    i, j, v = dedup.semantic_pairs(emb, MIN_COSINE)
    ei, ej, ev = dedup.cosine_pairs(emb, MIN_COSINE)
    by = np.lexsort((ej, ei))
    np.testing.assert_array_equal(i, ei[by])
    np.testing.assert_array_equal(j, ej[by])
    np.testing.assert_array_equal(v, ev[by])


def test_the_search_never_holds_an_n_by_n_matrix():
    # 60k rows: N x N float32 would be 14.4 GB and the exact search's 2048 x N block 0.5 GB. The list search's
    # numpy allocations (traced: row-to-list table, one product of <= 4M similarities, the pairs) stay under
    # 64 MiB; faiss's k-means (untraced) holds 64 rows per list and the centroids.
    emb, _ = planted(60_000, dim=16, copies=3000)
    tracemalloc.start()
    try:
        i, _, _ = dedup.semantic_pairs(emb, MIN_COSINE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(i) > 2000
    assert peak < 64 * 2**20


@pytest.mark.parametrize("params, expect", [
    ({"method": "semantic", "min_cosine": 0.9, "clusters": 0}, "greater than or equal to 1"),
    ({"method": "semantic", "min_cosine": 0.9, "nprobe": 0}, "greater than or equal to 1"),
    ({"method": "phash", "max_hamming": 4, "nprobe": 4}, "nprobe does not apply to dedup method phash"),
    ({"method": "exact", "clusters": 10}, "clusters does not apply to dedup method exact"),
    ({"method": "semantic", "min_cosine": 0.9, "lists": 10}, "unknown key"),
])
def test_search_params_are_validated(params, expect):
    with pytest.raises(RecipeError, match=expect):
        parse_recipe({"ops": [{"dedup": params}]}, "t.yaml", "t")


def test_search_params_show_in_the_label_only_when_given():
    assert dedup_op().label() == "dedup(semantic, min_cosine=0.95)"
    assert dedup_op(clusters=64, nprobe=4).label() == "dedup(semantic, min_cosine=0.95, clusters=64, nprobe=4)"
