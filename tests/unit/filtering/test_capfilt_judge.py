"""The caption filter on a trained tiny model: it prefers an image's own caption to one naming another colour and
shape, and its calibrated probability puts the two on either side of BLIP's 0.5."""

from __future__ import annotations

import os

import numpy as np

from filtering.capfilt import CaptionJudge, probability, read_calibration
from filtering.holdout import held_out
from filtering.preprocess import Preprocessor
from pipeline.core.images import open_rgb


def test_the_filter_prefers_the_matching_caption(trained_filter):
    web, _, out = trained_filter
    truth = web["truth"]
    # the filter's own held-out pairs: images and captions it never trained on
    hq = truth[(truth["split"] == "hq") & truth["uid"].map(lambda u: held_out(u, 0.2, 3))].reset_index(drop=True)
    judge = CaptionJudge({"name": "tiny-clip-rn", "weights": os.path.join(out, "model.pt")}, "cpu")
    pre = Preprocessor(judge.spec.preprocess_cfg())
    pixels = np.stack([pre(open_rgb(open(os.path.join(web["web"], p), "rb").read())) for p in hq["path"]])
    rng = np.random.default_rng(0)
    wrong = []  # a caption of an image that differs in both colour and shape
    for _, row in hq.iterrows():
        other = truth[(truth["split"] == "hq") & (truth["colour"] != row["colour"]) & (truth["shape"] != row["shape"])]
        wrong.append(other["caption"].iloc[int(rng.integers(len(other)))])
    scores = np.stack(judge.scores(pixels, [[r, w] for r, w in zip(hq["caption"], wrong, strict=True)]))  # (N, 2)
    assert len(hq) >= 100
    assert (scores[:, 0] > scores[:, 1]).mean() >= 0.85
    p = probability(scores, read_calibration(os.path.join(out, "holdout.json")), "clip")
    assert (p[:, 0] >= 0.5).mean() >= 0.7 and (p[:, 1] < 0.5).mean() >= 0.7
