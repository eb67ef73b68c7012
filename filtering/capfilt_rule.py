"""The `capfilt` recipe op's rule: which of an image's candidate captions (the web caption and the synthetic ones,
with the judge's score and match probability, `filtering.capfilt`) to keep. One rule per op: a calibrated
P(match) cut (BLIP's 0.5, or `auto`: the cut that best separated the judge's held-out pairs, `filtering.holdout`),
the best-scoring fraction of the pool's captions, or a raw score cut."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from filtering.capfilt import CapFiltError
from pipeline.core.config import StrictModel


class CapFiltParams(StrictModel):
    """The `capfilt` recipe op: which captions of an image to keep. One rule; none given = BLIP's P(match) >= 0.5.
    `min_probability: auto` cuts at the probability that best separated the judge's held-out positives from its
    negatives (`filtering.holdout.best_cut`: shuffled captions, and near misses when the judge's `holdout` counts
    them), read from the calibration the caption stage used; web captions at the cut against the shuffled ones
    only (a wrong web caption is unrelated text far more often than a near miss)."""

    min_probability: float | Literal["auto"] | None = Field(
        None, description="keep captions with calibrated P(match) >= this (BLIP's ITM threshold is 0.5); auto: the "
                          "judge's best cut on its held-out pairs")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep the best-scoring fraction of all the "
                                                                     "pool's candidate captions")
    min_score: float | None = Field(None, description="keep captions whose raw judge score (cosine) is >= this")
    sources: list[Literal["web", "synthetic"]] = Field(["web", "synthetic"], min_length=1,
                                                       description="which captions are candidates")

    @model_validator(mode="after")
    def _one_rule(self):
        if isinstance(self.min_probability, float | int) and not 0 <= self.min_probability <= 1:
            raise ValueError(f"min_probability must be within [0, 1] or auto (got {self.min_probability})")
        given = [k for k in ("min_probability", "top_fraction", "min_score") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of min_probability, top_fraction, min_score (got {', '.join(given)})")
        if not given:
            self.min_probability = 0.5
        return self

    @property
    def by_probability(self) -> bool:
        return self.min_probability is not None

    @property
    def auto(self) -> bool:
        return self.min_probability == "auto"


def auto_cut(calibration: dict | None) -> dict:
    """The probability cut `min_probability: auto` uses: the held-out best cut of the judge's calibration (what
    `read_calibration` read from its holdout.json), with where it came from. Raises when there is none."""
    cut = (calibration or {}).get("cut") or {}
    if cut.get("probability") is None:
        where = f" ({calibration['source']})" if calibration and calibration.get("source") else ""
        raise CapFiltError("capfilt: min_probability: auto needs the judge's best cut on its held-out pairs (a "
                           f"holdout.json written by a train-clip stage with `holdout:`); the caption stage's "
                           f"calibration{where} has none: rerun the filter's training stage, or give a number")
    # Web captions at the cut against unrelated captions only (what a wrong web caption is: another image's text, a
    # generic line), synthetic ones at the cut that also rejects near misses (what a captioner's mistakes are); an
    # older holdout.json without the second cut gives both the same cut.
    web = ((calibration or {}).get("cut_vs_unrelated") or {}).get("probability")
    return {"rule": "auto", "probability": float(cut["probability"]), "score": cut.get("score"),
            "balanced_accuracy": cut.get("balanced_accuracy"),
            "balanced_accuracy_at_half": cut.get("balanced_accuracy_at_half"),
            "web_probability": float(cut["probability"] if web is None else web),
            "near_misses": calibration.get("near_misses"), "source": calibration.get("source")}


def candidates(web: np.ndarray, web_s: np.ndarray, web_p: np.ndarray, syn: np.ndarray, syn_s: np.ndarray,
               syn_p: np.ndarray, sources: list[str]) -> list[list[tuple[str, str, float, float]]]:
    """Per row, its candidate captions as (text, source, score, probability): the web caption first."""
    out = []
    for i in range(len(web)):
        row = []
        if "web" in sources and web[i] and np.isfinite(web_s[i]):
            row.append((str(web[i]), "web", float(web_s[i]), float(web_p[i])))
        if "synthetic" in sources:
            texts, scores, probs = (list(v) if v is not None else [] for v in (syn[i], syn_s[i], syn_p[i]))
            for j, text in enumerate(texts):
                if text and j < len(scores) and scores[j] is not None and np.isfinite(scores[j]):
                    p = probs[j] if j < len(probs) and probs[j] is not None else float("nan")
                    row.append((str(text), "synthetic", float(scores[j]), float(p)))
        out.append(row)
    return out


def judge_captions(params: CapFiltParams, rows: list[list[tuple[str, str, float, float]]], judge: np.ndarray,
                   calibration: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Keep or drop each candidate caption. Returns (any caption kept (N,), the row's best value (N,), per row the
    verdicts `[{text, source, score, probability, judge, kept, drop_op}]` (kept first, best first), threshold).
    `calibration` (the caption stage's) gives `min_probability: auto` its cuts (`auto_cut`: the threshold returned
    is the synthetic captions' cut; web captions have their own)."""
    by_p = params.by_probability
    value = (lambda c: c[3]) if by_p else (lambda c: c[2])
    web_cut = None  # web captions' own cut (auto only)
    if params.auto:
        rule = auto_cut(calibration)
        cut, web_cut = rule["probability"], rule["web_probability"]
    elif params.top_fraction is not None:
        from filtering.ops import top_fraction_threshold

        pool = np.asarray([c[2] for row in rows for c in row], dtype=np.float64)
        cut = top_fraction_threshold(pool, params.top_fraction)
    else:
        cut = params.min_probability if by_p else params.min_score
    n = len(rows)
    kept_any, best = np.zeros(n, bool), np.full(n, np.nan)
    verdicts = np.empty(n, dtype=object)
    for i, row in enumerate(rows):
        out = []
        for c in row:
            v = value(c)
            keep = bool(np.isfinite(v) and v >= (web_cut if web_cut is not None and c[1] == "web" else cut))
            out.append({"text": c[0], "source": c[1], "score": c[2], "probability": None if c[3] != c[3] else c[3],
                        "judge": judge[i], "kept": keep, "drop_op": None if keep else "capfilt"})
        vals = [value(c) for c in row if np.isfinite(value(c))]
        best[i] = max(vals) if vals else np.nan
        kept_any[i] = any(v["kept"] for v in out)
        verdicts[i] = sorted(out, key=lambda v: (not v["kept"], -v["score"]))
    return kept_any, best, verdicts, float(cut)
