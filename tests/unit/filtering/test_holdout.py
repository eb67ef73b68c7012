"""The bootstraps' filter check: a stable held-out split, AUROC, Platt calibration, shuffled and junk negatives."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from filtering.holdout import HoldoutProbe, HoldoutSplit, auroc, derangement, fit_platt, held_out, junk_images, warning


def test_the_split_is_a_stable_fraction_that_moves_with_the_seed():
    uids = [f"{i:032x}" for i in range(20000)]
    a = [held_out(u, 0.1, 0) for u in uids]
    assert abs(np.mean(a) - 0.1) < 0.01
    assert a == [HoldoutSplit(0.1, 0).uid(u) for u in uids]  # the same answer wherever it is asked
    b = [held_out(u, 0.1, 1) for u in uids]
    assert 0.005 < np.mean(np.array(a) & np.array(b)) < 0.02  # another seed: another, nearly independent, 10%
    assert not any(held_out(u, 0.0, 0) for u in uids[:100])
    # a raw sample's uid comes from its JSON, as the signals and the caption stage read it
    assert HoldoutSplit(0.1, 0)({"__key__": "k", "json": b'{"uid": "%s"}' % uids[3].encode()}) == a[3]


def test_auroc_is_the_pairwise_win_rate_with_ties_counting_half():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # rounded: plenty of ties
    y = rng.random(60) < 0.4
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(s[y], s[~y]))
    assert auroc(s, y) == pytest.approx(wins / (y.sum() * (~y).sum()))
    assert auroc([1, 2, 3], [False, True, True]) == 1.0 and auroc([3, 2, 1], [False, True, True]) == 0.0
    assert math.isnan(auroc([1, 2], [True, True]))
    assert auroc([1, np.nan, 3], [False, True, True]) == 1.0  # NaN scores left out


def test_platt_recovers_the_likelihood_ratio_of_two_gaussians():
    """N(+1, 1) vs N(-1, 1) at equal priors: log-odds = 2x, so a = 2, b = 0, and p = 0.5 at 0."""
    rng = np.random.default_rng(1)
    p = fit_platt(rng.normal(1, 1, 4000), rng.normal(-1, 1, 4000))
    assert p.a == pytest.approx(2.0, rel=0.08) and abs(p.b) < 0.08 and abs(p.threshold) < 0.04
    shifted = fit_platt(rng.normal(0.3, 0.1, 2000), rng.normal(0.1, 0.1, 2000))  # cosines: p = 0.5 at 0.2
    assert shifted.threshold == pytest.approx(0.2, abs=0.01)
    assert shifted.probability([0.0, 0.2, 0.4]).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=0.03)
    # unequal class sizes do not move the threshold: the classes weigh the same
    assert fit_platt(rng.normal(0.3, 0.1, 300), rng.normal(0.1, 0.1, 3000)).threshold == pytest.approx(0.2, abs=0.02)


def test_derangement_gives_every_image_another_caption():
    caps = [f"caption {i % 7}" for i in range(40)]  # repeated texts
    perm = derangement(caps, 0)
    assert sorted(perm) == list(range(40))
    assert all(perm[i] != i and caps[perm[i]] != caps[i] for i in range(40))
    assert not np.array_equal(perm, derangement(caps, 1))


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_probe_measures_a_scorer_against_shuffled_and_junk_negatives():
    colours = ["red", "green", "blue", "yellow"]
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
    probe = HoldoutProbe(HoldoutSplit(0.1), [_png(rgb[c]) for c in colours * 5],
                         [f"a {c} square" for c in colours * 5], junk=True)

    def oracle(images, captions):  # 1 when the caption names the image's colour
        names = {v: k for k, v in rgb.items()}
        return np.array([float(str(names.get(im.getpixel((8, 8)))) in cap) for im, cap in
                         zip(images, captions, strict=True)])

    good = probe.evaluate(oracle)
    assert good["pairs"] == 20 and good["negatives"] == 40  # 20 shuffled + 20 junk
    assert good["estimated_auroc"] == 1.0 and good["auroc_shuffled"] == 1.0 and good["auroc_junk"] == 1.0
    assert good["warning"] is None and 0 < good["platt"]["threshold_score"] < 1
    blind = probe.evaluate(lambda images, captions: np.zeros(len(images)))
    assert blind["estimated_auroc"] == 0.5 and "below 0.85" in blind["warning"]
    assert "more high-quality data" in blind["warning"] and "more training steps" in blind["warning"]
    assert warning(0.9, 100) is None and warning(0.84, 100)


def test_junk_images_are_noise_flat_and_gradients():
    imgs = [np.asarray(im, dtype=float) for im in junk_images(6, 0, 32)]
    assert all(im.shape == (32, 32, 3) for im in imgs)
    assert imgs[0].std(axis=(0, 1)).min() > 50 and imgs[1].std(axis=(0, 1)).max() == 0  # noise, flat
    assert np.all(np.diff(imgs[2][:, 0, :].mean(axis=1)) * np.sign(imgs[2][-1, 0].mean() - imgs[2][0, 0].mean())
                  >= 0)  # a ramp from top to bottom
