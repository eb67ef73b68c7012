"""Thresholds on any numeric signal: `<signal>: {min: x}`, `{max: x}` or `{top_fraction: f}` (dfn_score,
caption_words, image_bytes, ...).

A fraction is taken over the whole scored pool (every sample with a score, before any op), so a recipe's
`top_fraction: 0.3` means the same cut whatever ops run first. With N scored samples, k = floor(fraction * N) (at
least 1 when the fraction is > 0); the threshold is the k-th highest score and every sample scoring >= it passes:
ties at the boundary all pass, so slightly more than k may pass, and the cut is the same absolute threshold the
report draws.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from filtering.ops.base import Op, Pool, outside
from pipeline.core.config import StrictModel


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
    """The k-th highest score over the scored pool, k = floor(fraction * N) (>= 1 when fraction > 0). Exact, by a
    selection (np.partition, O(N)) rather than a sort: the same value a full sort gives."""
    s = scores[~np.isnan(scores)]
    if len(s) == 0 or fraction <= 0:
        return math.inf
    k = min(max(1, int(math.floor(fraction * len(s) + 1e-9))), len(s))
    at = len(s) - k  # the k-th highest is the (N - k)-th lowest (0-based)
    return float(np.partition(s, at)[at])


class ScoreThreshold(Op):
    """`<signal>: {min: x}`, `{max: x}` or `{top_fraction: f}` on any numeric signal (dfn_score, caption_words).
    Not a named op: a recipe key that names a numeric signal column becomes one."""

    params_model = ThresholdParams

    def __init__(self, signal: str, params: ThresholdParams):
        super().__init__(params)
        self.name = signal

    def requires(self):
        return {self.name}

    def cut(self, pool: Pool) -> tuple[float | None, float | None]:
        p = self.params
        if p.top_fraction is not None:
            scores = pool.numeric(self.name)  # cached by the pool: the same array while the pool lives
            if getattr(self, "_cut", (None,))[0] is not scores:  # once per pool: apply and the funnel both ask
                self._cut = (scores, top_fraction_threshold(scores, p.top_fraction))
            return self._cut[1], None
        return p.min, p.max

    def threshold(self, pool):
        low, high = self.cut(pool)
        return (self.name, low if low is not None else high)

    def apply(self, pool, alive):
        low, high = self.cut(pool)
        return outside(pool.numeric(self.name), alive, low=low, high=high)
