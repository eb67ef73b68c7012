"""Deduplication: keep one sample per group of exact (sha256), near (perceptual hash) or semantic (embedding)
duplicates."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from filtering import dedup
from filtering.images import phash_to_uint64
from filtering.ops.base import Drops, Op, Pool
from pipeline.core.config import StrictModel


class DedupParams(StrictModel):
    method: Literal["exact", "phash", "semantic"]
    max_hamming: int | None = Field(None, ge=0, le=32, description="phash: most differing bits of a near copy")
    min_cosine: float | None = Field(None, gt=-1, le=1, description="semantic: least cosine of a near copy")
    clusters: int | None = Field(None, ge=1, description="semantic, pools over 10,000 rows: k-means lists of "
                                 "the approximate search (default: one per 1000 rows)")
    nprobe: int | None = Field(None, ge=1, description="semantic, pools over 10,000 rows: nearest lists each "
                               "sample is compared with (default 8; more finds more pairs across lists, costs more)")

    @model_validator(mode="after")
    def _params(self) -> DedupParams:
        need = {"exact": None, "phash": "max_hamming", "semantic": "min_cosine"}[self.method]
        other = {"max_hamming", "min_cosine"} - {need}
        if self.method != "semantic":
            other |= {"clusters", "nprobe"}
        if need and getattr(self, need) is None:
            raise ValueError(f"dedup method {self.method} needs {need}")
        for key in sorted(other):
            if getattr(self, key) is not None:
                raise ValueError(f"{key} does not apply to dedup method {self.method}")
        return self


def priority_within(pool: Pool, members: np.ndarray) -> np.ndarray:
    """`dedup.priority_order` of the rows `members` (as positions among them). The pool's whole order is computed
    once and shared by every dedup op: the order of a subset by the same keys is the whole order restricted to it
    (ties keep row order in both)."""
    def whole() -> np.ndarray:
        score = pool.numeric("dfn_score") if "dfn_score" in pool.signals else None
        pixels = pool.numeric("width") * pool.numeric("height")
        return dedup.priority_order_by(pool.n, score, pixels, lambda rows: pool.take_strings("uid", rows))

    order = pool.cached("priority", whole)
    position = np.cumsum(members) - 1  # row -> its position among the members
    return position[order[members[order]]]


class Dedup(Op):
    """Keep one sample per group of duplicates: the highest dfn_score, then the most pixels, then the smallest uid."""

    name = "dedup"
    params_model = DedupParams

    def requires(self):
        return {"exact": {"sha256"}, "phash": {"phash"}, "semantic": {"embedding"}}[self.params.method]

    def label(self):
        p = self.params
        extra = {"exact": "", "phash": f", max_hamming={p.max_hamming}", "semantic": f", min_cosine={p.min_cosine}"}
        search = "".join(f", {k}={getattr(p, k)}" for k in ("clusters", "nprobe") if getattr(p, k) is not None)
        return f"dedup({p.method}{extra[p.method]}{search})"

    def pairs(self, pool: Pool, idx: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate pairs among the rows `idx` (positions into idx) with their distance or cosine."""
        p = self.params
        if p.method == "exact":
            return dedup.exact_pairs(pool.codes("sha256", ordered=False)[idx])
        if p.method == "phash":
            return dedup.hamming_pairs(phash_to_uint64(pool.table.column("phash").take(pa.array(idx))),
                                       p.max_hamming)
        # The search sees the rows in priority order, so its k-means (which samples rows by seed) and hence the
        # pairs it finds do not depend on how the pool happens to be ordered.
        emb = pool.embeddings[idx[order]].astype(np.float32)
        finite = np.flatnonzero(np.isfinite(emb).all(axis=1))  # a broken embedding is near nothing; and faiss's
        if len(finite) < len(emb):  # k-means refuses NaN or inf
            emb = emb[finite]
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        i, j, v = dedup.semantic_pairs(emb, p.min_cosine, clusters=p.clusters, nprobe=p.nprobe)
        return order[finite[i]], order[finite[j]], v

    def apply(self, pool, alive):
        col = {"exact": "sha256", "phash": "phash", "semantic": None}[self.params.method]
        members = alive.copy()
        if col:
            members &= pool.valid(col)
        idx = np.flatnonzero(members)
        order = priority_within(pool, members)
        i, j, v = self.pairs(pool, idx, order)
        dropped, rep, val = dedup.greedy_keep(len(idx), i, j, v, order)
        mask = np.zeros(pool.n, bool)
        value = np.full(pool.n, np.nan)
        detail = np.full(pool.n, None, dtype=object)
        mask[idx[dropped]] = True
        value[idx[dropped]] = val[dropped]
        detail[idx[dropped]] = pool.take_strings("uid", idx[rep[dropped]])
        return Drops(mask, value, detail)
