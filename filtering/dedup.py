"""Duplicate search and the choice of which copy survives.

Candidates are pairs within a threshold: equal SHA-256 (exact), perceptual hashes within `max_hamming` bits, or
image embeddings with cosine >= `min_cosine` (semantic, in the spirit of SemDeDup). Survivors are chosen greedily
in priority order (highest `dfn_score`, then most pixels, then smallest uid): a sample is dropped when a
higher-priority sample within the threshold was kept, and it records that sample's uid and their distance. So
every dropped sample names a kept near copy, and the result does not depend on input order.

Hamming search uses the pigeonhole principle: split the 64-bit hash into m bands; two hashes within `max_hamming`
bits agree exactly on at least m - max_hamming bands, so only pairs sharing such a combination of bands are compared
(m = max_hamming + 1 for small pools; more bands for pools of millions, where one band of 13 bits would pair every
row with n / 8192 others by chance).

Semantic search compares every pair exactly (`cosine_pairs`, O(N^2 D)) only for pools of up to EXACT_MAX_ROWS
= 10,000 rows. Larger pools are searched SemDeDup's way, made symmetric (`semantic_pairs`): faiss's spherical
k-means splits the pool into `clusters` lists (default one per ROWS_PER_CLUSTER = 1000 rows), faiss ranks the
lists for every row, and each list's rows are compared, by matrix products, with every row that has the list
among its `nprobe` nearest (default 8). A pair is found when either row's probes cover the other's list, so
pairs that straddle a list boundary are still found unless both rows sit far from each other's lists;
comparing within one's own list only (nprobe 1, as SemDeDup does) misses them. Work per row, in D-dimensional
dot products: nlist to rank the lists, nprobe * N / nlist to compare, 640 * nlist^2 / N for k-means (10
iterations over 64 rows per list): about 8000 + N / 600 with the defaults, against N for the exact search. So
the cost is near-linear up to a few million rows (bench/dedup.py measures it) and beyond that grows as N^2 with
~1/600 of the exact search's constant. Memory: the row-to-list table (N x nprobe), one product of at most 4M
similarities at a time, and the pairs found: nothing N x N.
"""

from __future__ import annotations

import numpy as np


def _pairs_in_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose values are equal. Vectorised per group size: a pool of millions with
    hundreds of thousands of small groups costs one sort."""
    values = np.asarray(values)
    n = len(values)
    row_bits = max(1, int(n - 1).bit_length())
    if values.dtype.kind in "iu" and n > 1 and values.min() >= 0 and int(values.max()).bit_length() + row_bits <= 63:
        # value and row packed into one integer: a plain sort (much faster than an argsort) gives both. The order
        # within a group does not matter: pairs come out as (min, max).
        packed = np.sort((values.astype(np.uint64) << np.uint64(row_bits)) | np.arange(n, dtype=np.uint64))
        v = packed >> np.uint64(row_bits)
        same = v[1:] == v[:-1]
        grouped = np.zeros(n, bool)  # rows in a group of two or more: most are not, so keep only those
        grouped[1:] |= same
        grouped[:-1] |= same
        keep = np.flatnonzero(grouped)
        v, order = v[keep], (packed[keep] & np.uint64((1 << row_bits) - 1)).astype(np.int64)
        del packed, same, grouped
    elif values.dtype.kind in "iu" and n > 1:
        # any integers (64-bit hash codes): find the repeated values by one plain sort, then group only their rows
        s = np.sort(values)
        repeated = np.unique(s[1:][s[1:] == s[:-1]])
        del s
        rows = np.flatnonzero(repeated[np.minimum(np.searchsorted(repeated, values), max(len(repeated) - 1, 0))]
                              == values) if len(repeated) else np.empty(0, np.int64)
        order = rows[np.argsort(values[rows], kind="stable")]
        v = values[order]
    else:
        order = np.argsort(values, kind="stable")
        v = values[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if len(v) else np.empty(0, np.int64)
    sizes = np.diff(np.r_[starts, len(v)])
    left, right = [], []
    for size in np.unique(sizes[sizes >= 2]):
        first = starts[sizes == size]  # every group of this size: (groups, size) rows, one pair list for all
        members = order[first[:, None] + np.arange(size)]
        a, b = np.triu_indices(int(size), k=1)
        left.append(members[:, a].ravel())
        right.append(members[:, b].ravel())
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(left), np.concatenate(right)
    return np.minimum(i, j), np.maximum(i, j)


def exact_pairs(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs with equal hashes (strings, or integer codes of them: `Pool.codes`); distance 0."""
    hashes = np.asarray(hashes)
    i, j = _pairs_in_groups(hashes if hashes.dtype.kind in "iu" else hashes.astype(object).astype(str))
    return i, j, np.zeros(len(i), dtype=np.float64)


def _band_count(n: int, max_hamming: int, bits: int = 64) -> int:
    """How many bands to split a hash into: with m bands, a pair within `max_hamming` bits agrees exactly on at
    least m - max_hamming of them, so each combination of m - max_hamming bands is one exact-match key. More
    bands: more keys (passes) but fewer chance collisions per key (~n^2 / 2^key_bits); pick the cheapest."""
    from math import comb

    def cost(m: int) -> float:
        key_bits = bits * (m - max_hamming) // m
        return comb(m, max_hamming) * (n + n * n / 2.0 ** key_bits)

    candidates = [m for m in range(max_hamming + 1, min(bits, max_hamming + 8) + 1) if comb(m, max_hamming) <= 256]
    return min(candidates, key=cost)


def hamming_pairs(hashes: np.ndarray, max_hamming: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, sorted) of 64-bit hashes (uint64) within `max_hamming` differing bits, with their distance.

    Multi-index hashing: split the hash into m bands (`_band_count`); a near pair agrees on some m - max_hamming
    bands, so candidates are the pairs equal on one such combination, each then checked bit by bit. With m =
    max_hamming + 1 (one band must agree) a pool of millions meets n^2 / 2^13 chance candidates; more bands keep the
    candidates near the true pairs. The result is the same exact set for any m."""
    from itertools import combinations

    hashes = np.asarray(hashes, dtype=np.uint64)
    m = _band_count(len(hashes), max_hamming)
    edges = np.linspace(0, 64, m + 1).astype(int)
    cand_i, cand_j = [], []
    for combo in combinations(range(m), m - max_hamming):
        key, width = np.zeros(len(hashes), np.uint64), 0
        for b in combo:  # the chosen bands side by side: one integer key of as many bits as they have
            bits = int(edges[b + 1] - edges[b])
            key |= ((hashes >> np.uint64(edges[b])) & np.uint64((1 << bits) - 1)) << np.uint64(width)
            width += bits
        i, j = _pairs_in_groups(key)
        dist = np.bitwise_count(hashes[i] ^ hashes[j])
        near = dist <= max_hamming  # check now: chance candidates are not carried to the next key
        cand_i.append(i[near])
        cand_j.append(j[near])
    i, j = np.concatenate(cand_i), np.concatenate(cand_j)
    if len(i):
        pair = np.unique(i.astype(np.int64) * len(hashes) + j)
        i, j = pair // len(hashes), pair % len(hashes)
    dist = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
    return i, j, dist.astype(np.float64)


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


# Up to here the exact search (BLAS over 2048-row blocks, < 100 MB) is as fast as the list search (10 lists that
# 8 probes nearly cover), at D=64 and D=512 alike.
EXACT_MAX_ROWS = 10_000
ROWS_PER_CLUSTER = 1000  # lists of ~1000 rows: with 8 probes each row meets ~8000 others, whatever N is
DEFAULT_NPROBE = 8  # >= 0.999 of the exact pairs on the clustered benchmark data (bench/dedup.py)
KMEANS_SEED = 1234
KMEANS_ITERATIONS = 10
KMEANS_ROWS_PER_CLUSTER = 64  # k-means trains on 64 sampled rows per list: 10 * 64 * nlist^2 dot products


def default_clusters(n: int) -> int:
    return max(1, round(n / ROWS_PER_CLUSTER))


def semantic_pairs(emb: np.ndarray, min_cosine: float, clusters: int | None = None, nprobe: int | None = None,
                   exact_max_rows: int = EXACT_MAX_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of unit-norm embeddings (N, D) with cosine >= min_cosine, sorted; exact for small N.

    Above `exact_max_rows` the search is approximate (k-means lists, see the module doc): every pair it returns
    is a true pair with its cosine, and it may miss a few pairs that straddle list boundaries. Deterministic:
    k-means is seeded and each list is searched on its own, so the same rows give the same pairs; callers that
    want independence from row order pass the rows in a canonical order.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(emb)
    if n <= exact_max_rows:
        i, j, v = cosine_pairs(emb, min_cosine)
        by = np.lexsort((j, i))
        return i[by], j[by], v[by]
    probes = nearest_lists(emb, clusters or default_clusters(n), nprobe or DEFAULT_NPROBE)
    return _pairs_within_lists(emb, probes, min_cosine)


def nearest_lists(emb: np.ndarray, clusters: int, nprobe: int) -> np.ndarray:
    """(N, nprobe) int32: each row's nearest k-means lists, nearest first; the first is the list the row is in."""
    import faiss  # only semantic dedup needs it; a process that never dedups semantically does not load it

    n, d = emb.shape
    nlist = max(1, min(clusters, n // 39))  # faiss's k-means wants >= 39 rows per list (and warns otherwise)
    # spherical: unit centroids, so the list with the highest inner product is the nearest by angle
    kmeans = faiss.Kmeans(d, nlist, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, spherical=True,
                          max_points_per_centroid=KMEANS_ROWS_PER_CLUSTER)
    kmeans.train(emb)
    _, probes = kmeans.index.search(emb, min(nprobe, nlist))  # (N, nprobe)
    return probes.astype(np.int32)


def _pairs_within_lists(emb: np.ndarray, probes: np.ndarray, min_cosine: float,
                        cells: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every list, the rows that probe it against the rows in it, by matrix products of <= `cells` entries."""
    n, nprobe = probes.shape
    nlist = int(probes.max()) + 1
    members = np.argsort(probes[:, 0], kind="stable")
    member_start = np.searchsorted(probes[members, 0], np.arange(nlist + 1))
    by_list = np.argsort(probes.ravel(), kind="stable")
    queries = by_list // nprobe  # row of each (row, probe) entry, grouped by list
    query_start = np.searchsorted(probes.ravel()[by_list], np.arange(nlist + 1))
    keys, sims = [], []
    for c in range(nlist):
        m = members[member_start[c]:member_start[c + 1]]
        if len(m) == 0:
            continue
        in_list = emb[m].T  # (D, M)
        q_all = queries[query_start[c]:query_start[c + 1]]
        step = max(1, cells // len(m))
        for s in range(0, len(q_all), step):
            q = q_all[s:s + step]
            sim = emb[q] @ in_list  # (Q, M)
            a, b = np.nonzero(sim >= min_cosine)
            other = q[a] != m[b]  # every row finds itself
            qa, mb = q[a][other], m[b][other]
            keys.append(np.minimum(qa, mb) * n + np.maximum(qa, mb))
            sims.append(sim[a[other], b[other]])
    if not keys:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    # A pair found from both sides appears twice, with cosines equal up to float rounding: keep the first.
    key, first = np.unique(np.concatenate(keys), return_index=True)
    return key // n, key % n, np.concatenate(sims)[first].astype(np.float64)


def priority_order(uids: np.ndarray, score: np.ndarray | None = None, pixels: np.ndarray | None = None) -> np.ndarray:
    """Indices from most to least preferred: highest score (NaN last), then most pixels, then smallest uid."""
    uids = np.asarray(uids, dtype=object)
    return priority_order_by(len(uids), score, pixels, lambda rows: uids[rows])


def priority_order_by(n: int, score: np.ndarray | None, pixels: np.ndarray | None, uids_of) -> np.ndarray:
    """`priority_order` with the uids fetched only for rows that tie on score and pixels (`uids_of(rows)` -> their
    uid strings): a pool of millions sorts two numeric keys, and strings only where they decide. The same order
    as one lexsort of (uid, pixels, score): ties on all three keep row order."""
    px = -np.nan_to_num(np.asarray(pixels, dtype=np.float64), nan=0.0) if pixels is not None else np.zeros(n)
    if score is not None:
        s = np.asarray(score, dtype=np.float64)
        sk = np.where(np.isnan(s), np.inf, -s)
    else:
        sk = np.zeros(n)
    order = np.lexsort((px, sk))  # stable: rows that tie on both stay in row order
    if n < 2:
        return order
    change = np.ones(n, bool)  # where a run of equal (score, pixels) starts; in blocks: no full-length copies
    for lo in range(0, n - 1, 1 << 20):
        at = order[lo:min(n, lo + (1 << 20) + 1)]
        a, b = sk[at], px[at]
        change[lo + 1:lo + len(at)] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    del sk, px
    starts = np.flatnonzero(change)
    sizes = np.diff(np.r_[starts, n])
    tied = sizes >= 2
    if not tied.any():
        return order
    tied_starts, tied_sizes = starts[tied], sizes[tied]
    run = np.repeat(np.arange(len(tied_starts)), tied_sizes)  # the tied positions only, run by run
    at = np.repeat(tied_starts, tied_sizes) + (np.arange(len(run)) - np.repeat(np.cumsum(tied_sizes) - tied_sizes,
                                                                               tied_sizes))
    names = np.asarray(uids_of(order[at]), dtype=object).astype(str)
    order[at] = order[at][np.lexsort((names, run))]  # within a run by uid; equal uids keep row order
    return order


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
