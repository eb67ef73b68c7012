"""Filter ops: each reads signals of the samples still in the pool and says which to drop, and with what value.

An op is a small class: `apply(pool, alive) -> Drops` (a mask of dropped samples, the value that dropped each, and
an optional detail such as the kept duplicate's uid). Ops never recompute signals; they read the score stage's
columns. `requires` names the signals an op reads, so a recipe is checked against what was computed before any
work starts.

Score thresholds (`dfn_score: {top_fraction: 0.3}`) work on any numeric signal. A fraction is taken over the whole
scored pool (every sample with a score, before any op), so a recipe's `top_fraction: 0.3` means the same cut
whatever ops run first. With N scored samples, k = floor(fraction * N) (at least 1 when the fraction is > 0); the
threshold is the k-th highest score and every sample scoring >= it passes: ties at the boundary all pass, so
slightly more than k may pass, and the cut is the same absolute threshold the report draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, model_validator

from filtering import dedup
from filtering.capfilt import CALIBRATED, CAPTION_SIGNALS, CapFiltParams, candidates, judge_captions
from filtering.images import phash_to_uint64
from pipeline.core.config import StrictModel


class Pool:
    """The scored pool as columns (a pyarrow table) plus optional row-aligned image embeddings (N, D)."""

    def __init__(self, table: pa.Table, embeddings: np.ndarray | None = None):
        if embeddings is not None and len(embeddings) != table.num_rows:
            raise ValueError(f"embeddings have {len(embeddings)} rows, signals {table.num_rows}")
        self.table = table
        self.embeddings = embeddings
        self.n = table.num_rows
        self._cache: dict[str, np.ndarray] = {}

    @property
    def signals(self) -> set[str]:
        return set(self.table.column_names) | ({"embedding"} if self.embeddings is not None else set())

    def numeric(self, name: str) -> np.ndarray:
        """A numeric column as float64 with NaN for nulls."""
        if name not in self._cache:
            col = pc.cast(self.table.column(name), pa.float64())  # nulls become NaN
            self._cache[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return self._cache[name]

    def strings(self, name: str) -> np.ndarray:
        key = f"str:{name}"
        if key not in self._cache:
            values = self.table.column(name).to_pylist()
            out = np.empty(len(values), dtype=object)  # 1-D even when every value is a list of one length
            out[:] = values
            self._cache[key] = out
        return self._cache[key]

    def bools(self, name: str) -> np.ndarray:
        return np.array(self.table.column(name).fill_null(False).to_pylist(), dtype=bool)


@dataclass
class Drops:
    mask: np.ndarray  # (N,) bool: dropped by this op (only among alive rows)
    value: np.ndarray  # (N,) float: the value that dropped the row (NaN where not numeric)
    detail: np.ndarray | None = None  # (N,) object: text (a reason, the kept duplicate's uid), None where none
    captions: np.ndarray | None = None  # (N,) object: an op that judges captions: per row, each caption's verdict


class Op:
    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel] | None] = None

    def __init__(self, params: Any):
        self.params = params

    def requires(self) -> set[str]:
        return set()

    def label(self) -> str:
        p = self.params.model_dump(exclude_none=True) if isinstance(self.params, BaseModel) else self.params
        if isinstance(p, dict):
            return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")"
        return f"{self.name}: {str(p).lower() if isinstance(p, bool) else p}"

    def threshold(self, pool: Pool) -> tuple[str, float] | None:
        """(signal, threshold) for histograms in the report, where the op is a cut on one signal."""
        return None

    def apply(self, pool: Pool, alive: np.ndarray) -> Drops:
        raise NotImplementedError


def _below(values: np.ndarray, alive: np.ndarray, low: float | None = None, high: float | None = None) -> Drops:
    """Drop alive rows whose value is missing, < low or > high."""
    bad = np.isnan(values)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values > high
    return Drops(alive & bad, values.copy())


class MinImageSide(Op):
    name = "min_image_side"

    def requires(self):
        return {"width", "height"}

    def threshold(self, pool):
        return ("min_side", float(self.params))

    def apply(self, pool, alive):
        return _below(np.minimum(pool.numeric("width"), pool.numeric("height")), alive, low=self.params)


class MaxAspectRatio(Op):
    name = "max_aspect_ratio"

    def requires(self):
        return {"aspect_ratio"}

    def threshold(self, pool):
        return ("aspect_ratio", float(self.params))

    def apply(self, pool, alive):
        return _below(pool.numeric("aspect_ratio"), alive, high=self.params)


class MinCaptionWords(Op):
    name = "min_caption_words"

    def requires(self):
        return {"caption_words"}

    def threshold(self, pool):
        return ("caption_words", float(self.params))

    def apply(self, pool, alive):
        return _below(pool.numeric("caption_words"), alive, low=self.params)


class MinCaptionChars(Op):
    name = "min_caption_chars"

    def requires(self):
        return {"caption_chars"}

    def threshold(self, pool):
        return ("caption_chars", float(self.params))

    def apply(self, pool, alive):
        return _below(pool.numeric("caption_chars"), alive, low=self.params)


class DropGenericCaptions(Op):
    name = "drop_generic_captions"

    def requires(self):
        return {"generic_caption", "generic_reason"} if self.params else set()

    def apply(self, pool, alive):
        if not self.params:
            return Drops(np.zeros(pool.n, bool), np.full(pool.n, np.nan))
        generic = pool.bools("generic_caption")
        return Drops(alive & generic, generic.astype(float), pool.strings("generic_reason"))


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
            return dedup.exact_pairs(pool.strings("sha256")[idx])
        if p.method == "phash":
            return dedup.hamming_pairs(phash_to_uint64(pool.strings("phash")[idx]), p.max_hamming)
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
            members &= np.array([v is not None for v in pool.strings(col)], dtype=bool)
        idx = np.flatnonzero(members)
        uids = pool.strings("uid")[idx]
        score = pool.numeric("dfn_score")[idx] if "dfn_score" in pool.signals else None
        pixels = (pool.numeric("width") * pool.numeric("height"))[idx]
        order = dedup.priority_order(uids, score, pixels)
        i, j, v = self.pairs(pool, idx, order)
        dropped, rep, val = dedup.greedy_keep(len(idx), i, j, v, order)
        mask = np.zeros(pool.n, bool)
        value = np.full(pool.n, np.nan)
        detail = np.full(pool.n, None, dtype=object)
        mask[idx[dropped]] = True
        value[idx[dropped]] = val[dropped]
        detail[idx[dropped]] = uids[rep[dropped]]
        return Drops(mask, value, detail)


class ThresholdParams(StrictModel):
    min: float | None = Field(None, description="drop samples scoring below this")
    max: float | None = Field(None, description="drop samples scoring above this")
    top_fraction: float | None = Field(None, ge=0, le=1, description="keep the best fraction of the scored pool")

    @model_validator(mode="after")
    def _one(self) -> ThresholdParams:
        if self.top_fraction is not None and (self.min is not None or self.max is not None):
            raise ValueError("give either top_fraction or min/max, not both")
        if self.top_fraction is None and self.min is None and self.max is None:
            raise ValueError("give one of min, max, top_fraction")
        return self


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The k-th highest score over the scored pool, k = floor(fraction * N) (>= 1 when fraction > 0)."""
    s = np.sort(scores[~np.isnan(scores)])[::-1]
    if len(s) == 0 or fraction <= 0:
        return math.inf
    k = max(1, int(math.floor(fraction * len(s) + 1e-9)))
    return float(s[min(k, len(s)) - 1])


class ScoreThreshold(Op):
    """`<signal>: {min: x}`, `{max: x}` or `{top_fraction: f}` on any numeric signal (dfn_score, caption_words)."""

    params_model = ThresholdParams

    def __init__(self, signal: str, params: ThresholdParams):
        super().__init__(params)
        self.name = signal

    def requires(self):
        return {self.name}

    def cut(self, pool: Pool) -> tuple[float | None, float | None]:
        p = self.params
        if p.top_fraction is not None:
            return top_fraction_threshold(pool.numeric(self.name), p.top_fraction), None
        return p.min, p.max

    def threshold(self, pool):
        low, high = self.cut(pool)
        return (self.name, low if low is not None else high)

    def apply(self, pool, alive):
        low, high = self.cut(pool)
        return _below(pool.numeric(self.name), alive, low=low, high=high)


class CapFilt(Op):
    """BLIP's CapFilt filter, per caption: the web caption and each synthetic caption (caption stage) is kept when
    the judge says it matches the image (`filtering.capfilt`); an image left with no caption is dropped."""

    name = "capfilt"
    params_model = CapFiltParams

    def requires(self):
        return {"caption", *CAPTION_SIGNALS} | ({CALIBRATED} if self.params.by_probability else set())

    def label(self):
        p = self.params
        rule = next(f"{k}={getattr(p, k)}" for k in ("min_probability", "top_fraction", "min_score")
                    if getattr(p, k) is not None)
        return f"capfilt({rule}, sources={'+'.join(p.sources)})"

    def threshold(self, pool):
        cut = getattr(self, "cut", None)
        return None if cut is None else ("caption_probability" if self.params.by_probability else "caption_score",
                                         cut)

    def apply(self, pool, alive):
        rows = candidates(pool.strings("caption"), pool.numeric("web_score"), pool.numeric("web_probability"),
                          pool.strings("synthetic_captions"), pool.strings("synthetic_scores"),
                          pool.strings("synthetic_probabilities"), self.params.sources)
        judge = pool.strings("caption_filter") if "caption_filter" in pool.signals else np.full(pool.n, None)
        kept, best, verdicts, self.cut = judge_captions(self.params, rows, judge)
        detail = np.array([None if k else f"no caption kept of {len(r)}" for k, r in zip(kept, rows, strict=True)],
                          dtype=object)
        return Drops(alive & ~kept, best, detail, verdicts)


NAMED_OPS: dict[str, type[Op]] = {
    op.name: op for op in (MinImageSide, MaxAspectRatio, MinCaptionWords, MinCaptionChars, DropGenericCaptions, Dedup,
                           CapFilt)
}
SCALAR_PARAMS = {"min_image_side": (int, 0), "max_aspect_ratio": (float, 1.0), "min_caption_words": (int, 0),
                 "min_caption_chars": (int, 0), "drop_generic_captions": (bool, None)}
