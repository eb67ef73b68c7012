"""Ops on captions: length, generic captions, and BLIP's CapFilt (per-caption verdicts of a judge)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from filtering.capfilt import CALIBRATED, CAPTION_SIGNALS
from filtering.capfilt_rule import CapFiltParams, auto_cut, candidates, judge_captions
from filtering.ops.base import Drops, Op, no_drops, outside


class MinOfSignal(Op):
    """Drop samples whose `column` is below the op's one value."""

    column: ClassVar[str]
    scalar = (int, 0)

    def requires(self):
        return {self.column}

    def threshold(self, pool):
        return (self.column, float(self.params))

    def apply(self, pool, alive):
        return outside(pool.numeric(self.column), alive, low=self.params)


class MinCaptionWords(MinOfSignal):
    name = "min_caption_words"
    column = "caption_words"


class MinCaptionChars(MinOfSignal):
    name = "min_caption_chars"
    column = "caption_chars"


class DropGenericCaptions(Op):
    """Drop captions a filename, a bare word or boilerplate (`generic_caption`), recording why."""

    name = "drop_generic_captions"
    scalar = (bool, None)

    def requires(self):
        return {"generic_caption", "generic_reason"} if self.params else set()

    def apply(self, pool, alive):
        if not self.params:
            return no_drops(pool.n)
        generic = pool.bools("generic_caption")
        detail = np.full(pool.n, None, dtype=object)  # the reason of the generic ones, not a string per row
        rows = np.flatnonzero(generic)
        detail[rows] = pool.take_strings("generic_reason", rows)
        return Drops(alive & generic, generic.astype(float), detail)


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
        calibration = pool.context.get("caption_calibration")
        self.rule = auto_cut(calibration) if self.params.auto else None  # the filter stage records it
        kept, best, verdicts, self.cut = judge_captions(self.params, rows, judge, calibration)
        detail = np.array([None if k else f"no caption kept of {len(r)}" for k, r in zip(kept, rows, strict=True)],
                          dtype=object)
        return Drops(alive & ~kept, best, detail, verdicts)
