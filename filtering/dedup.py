"""Duplicate search and the choice of which copy survives.

Candidates are pairs within a threshold: equal SHA-256 (exact), perceptual hashes within `max_hamming` bits, or
image embeddings with cosine >= `min_cosine` (semantic, in the spirit of SemDeDup). Survivors are chosen greedily
in priority order (highest `dfn_score`, then most pixels, then smallest uid): a sample is dropped when a
higher-priority sample within the threshold was kept, and it records that sample's uid and their distance. So
every dropped sample names a kept near copy, and the result does not depend on input order.

Hamming search uses the pigeonhole principle: split the 64-bit hash into `max_hamming + 1` bands; two hashes
within `max_hamming` bits agree exactly on at least one band, so only pairs sharing a band are compared.

Semantic search compares every pair exactly (`cosine_pairs`, O(N^2 D)) only for pools of up to EXACT_MAX_ROWS
rows. Larger pools go through a faiss inverted-file index (`semantic_pairs`), SemDeDup's idea made symmetric:
spherical k-means splits the pool into `clusters` lists (default one per ROWS_PER_CLUSTER rows), and every sample
range-searches the `nprobe` lists nearest to it (default 8) at the cosine threshold. A pair is found when either
sample's probes cover the other's list, so pairs that straddle a cluster boundary are still found unless both
samples sit far from each other's lists. Cost per sample: nlist * D to rank the lists plus nprobe * N / nlist * D
to scan them, i.e. about (N / 1000 + 8000) * D with the defaults instead of N * D: linear until the list
ranking dominates (tens of millions of rows), and always ~1000x less work than the exact search. Memory: the
index holds one copy of the embeddings; the pair list holds the near-duplicate pairs found, nothing N x N.
"""

from __future__ import annotations

import numpy as np


def _pairs_in_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose values are equal."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    left, right = [], []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        idx = order[s:e]
        a, b = np.triu_indices(len(idx), k=1)
        left.append(idx[a])
        right.append(idx[b])
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(left), np.concatenate(right)
    return np.minimum(i, j), np.maximum(i, j)


def exact_pairs(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs with equal hash strings; distance 0."""
    i, j = _pairs_in_groups(np.asarray(hashes, dtype=object).astype(str))
    return i, j, np.zeros(len(i), dtype=np.float64)


def hamming_pairs(hashes: np.ndarray, max_hamming: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of 64-bit hashes (uint64) within `max_hamming` differing bits, with their distance."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    bands = max_hamming + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    cand_i, cand_j = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        band = (hashes >> np.uint64(lo)) & mask
        i, j = _pairs_in_groups(band)
        cand_i.append(i)
        cand_j.append(j)
    i, j = np.concatenate(cand_i), np.concatenate(cand_j)
    if len(i):
        pair = np.unique(np.stack([i, j], axis=1), axis=0)
        i, j = pair[:, 0], pair[:, 1]
    dist = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
    keep = dist <= max_hamming
    return i[keep], j[keep], dist[keep].astype(np.float64)


def cosine_pairs(emb: np.ndarray, min_cosine: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of unit-norm embeddings (N, D) with cosine >= min_cosine; exact, blockwise O(N^2 D)."""
    emb = np.asarray(emb, dtype=np.float32)
    out_i, out_j, out_v = [], [], []
    for s in range(0, len(emb), block):
        sim = emb[s:s + block] @ emb.T  # (b, N)
        bi, bj = np.nonzero(sim >= min_cosine)
        gi = bi + s
        upper = bj > gi
        out_i.append(gi[upper])
        out_j.append(bj[upper])
        out_v.append(sim[bi[upper], bj[upper]].astype(np.float64))
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v)


EXACT_MAX_ROWS = 5000  # exact search takes < 1 s here even at D=512, and k-means would get too few rows per list
ROWS_PER_CLUSTER = 1000  # k-means lists of ~1000 rows: 8 probes scan ~8000 rows per sample whatever N is
DEFAULT_NPROBE = 8  # >= 0.999 of the exact pairs on the clustered benchmark data (bench/dedup.py)
KMEANS_SEED = 1234
KMEANS_ITERATIONS = 10
KMEANS_ROWS_PER_CLUSTER = 64  # training sample per list: enough for stable centroids, keeps training O(nlist^2 D)


def default_clusters(n: int) -> int:
    return max(1, round(n / ROWS_PER_CLUSTER))


def semantic_pairs(emb: np.ndarray, min_cosine: float, clusters: int | None = None, nprobe: int | None = None,
                   exact_max_rows: int = EXACT_MAX_ROWS,
                   block: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of unit-norm embeddings (N, D) with cosine >= min_cosine, sorted; exact for small N.

    Above `exact_max_rows` the search is approximate (an IVF index, see the module doc): every pair it returns is
    a true pair with its exact cosine, and it may miss a few pairs that straddle list boundaries. Deterministic:
    k-means is seeded and each sample's search is independent of the others, so the same rows give the same
    pairs; callers that want independence from row order pass the rows in a canonical order.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(emb)
    if n <= exact_max_rows:
        i, j, v = cosine_pairs(emb, min_cosine)
        by = np.lexsort((j, i))
        return i[by], j[by], v[by]
    index = _ivf_index(emb, clusters or default_clusters(n), nprobe or DEFAULT_NPROBE)
    return _range_pairs(index, emb, min_cosine, block)


def _ivf_index(emb: np.ndarray, clusters: int, nprobe: int):
    import faiss  # only semantic dedup needs it; a process that never dedups semantically does not load it

    n, d = emb.shape
    nlist = max(1, min(clusters, n // 39))  # faiss's k-means wants >= 39 rows per list (and warns otherwise)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = KMEANS_SEED
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.max_points_per_centroid = KMEANS_ROWS_PER_CLUSTER
    index.cp.spherical = True  # unit centroids: the list with the highest inner product is the nearest by angle
    index.train(emb)
    index.add(emb)
    index.nprobe = min(nprobe, nlist)
    return index


def _list_order(index) -> np.ndarray:
    """Row ids list by list: consecutive queries then probe mostly the same lists, which stay in cache."""
    import faiss

    inv = index.invlists
    return np.concatenate([faiss.rev_swig_ptr(inv.get_ids(k), inv.list_size(k)).copy()
                           for k in range(index.nlist) if inv.list_size(k)])


def _range_pairs(index, emb: np.ndarray, min_cosine: float, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's range search, as unique pairs (i < j) with their cosine."""
    n = len(emb)
    # faiss keeps inner products > radius; the float32 just below min_cosine makes that >= min_cosine, as exact.
    radius = float(np.nextafter(np.float32(min_cosine), np.float32(-2)))
    rows = _list_order(index)
    keys, sims = [], []
    for s in range(0, n, block):
        batch = rows[s:s + block]
        lims, sim, ids = index.range_search(emb[batch], radius)
        q = np.repeat(batch, np.diff(lims).astype(np.int64))
        other = ids != q  # every row finds itself
        q, ids = q[other], ids[other]
        keys.append(np.minimum(q, ids) * n + np.maximum(q, ids))
        sims.append(sim[other])
    if not keys:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    # A pair found from both sides appears twice, with cosines equal up to float rounding: keep the first.
    key, first = np.unique(np.concatenate(keys), return_index=True)
    return key // n, key % n, np.concatenate(sims)[first].astype(np.float64)


def priority_order(uids: np.ndarray, score: np.ndarray | None = None, pixels: np.ndarray | None = None) -> np.ndarray:
    """Indices from most to least preferred: highest score (NaN last), then most pixels, then smallest uid."""
    n = len(uids)
    keys = [np.asarray(uids, dtype=object).astype(str)]  # np.lexsort: the last key is the primary one
    keys.append(-np.nan_to_num(np.asarray(pixels, dtype=np.float64), nan=0.0) if pixels is not None else np.zeros(n))
    if score is not None:
        s = np.asarray(score, dtype=np.float64)
        keys.append(np.where(np.isnan(s), np.inf, -s))
    return np.lexsort(keys)


def greedy_keep(n: int, i: np.ndarray, j: np.ndarray, value: np.ndarray,
                order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk samples in priority `order`; drop each one near an already kept sample.

    Returns (dropped mask, representative index (-1 if kept), value of the pair that dropped it).
    """
    dropped = np.zeros(n, dtype=bool)
    rep = np.full(n, -1, dtype=np.int64)
    val = np.full(n, np.nan)
    if len(i) == 0:
        return dropped, rep, val
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # Orient every pair from the preferred sample (a) to the other (b); b can only be dropped by a.
    a = np.where(rank[i] < rank[j], i, j)
    b = np.where(rank[i] < rank[j], j, i)
    by_a = np.lexsort((rank[b], rank[a]))
    a, b, v = a[by_a], b[by_a], value[by_a]
    ra = rank[a]
    heads = np.unique(ra)
    starts, ends = np.searchsorted(ra, heads, side="left"), np.searchsorted(ra, heads, side="right")
    for r, s, e in zip(heads, starts, ends, strict=True):
        src = order[r]
        if dropped[src]:
            continue  # a dropped sample represents no one: its near copies stay unless a kept one is near them
        for k in range(s, e):
            t = b[k]
            if not dropped[t]:
                dropped[t], rep[t], val[t] = True, src, v[k]
    return dropped, rep, val
