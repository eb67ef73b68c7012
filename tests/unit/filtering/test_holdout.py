"""The bootstraps' filter check: a stable held-out split, AUROC, Platt calibration, shuffled and junk negatives."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from filtering.holdout import (
    HoldoutProbe,
    HoldoutSplit,
    Platt,
    auroc,
    best_cut,
    derangement,
    fit_platt,
    held_out,
    junk_images,
    near_miss,
    warning,
)


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


def test_near_misses_swap_one_word_for_another_captions_word_in_the_same_template_slot():
    caps = ["a small red circle in the centre", "a large blue square in the centre",
            "a small green star in the centre",
            "a photo of a shirt", "a photo of a sneaker", "a photo of an orange", "the only one of its kind"]
    out = near_miss(caps, 0)
    for before, after in zip(caps[:6], out[:6], strict=True):
        diff = [(b, a) for b, a in zip(before.split(), after.split(), strict=True) if b != a and b not in ("a", "an")]
        assert len(after.split()) == len(before.split()) and len(diff) == 1  # exactly one word swapped
        pos = before.split().index(diff[0][0])
        # ... for a word another caption of the same template has at that place
        assert any(len(c.split()) == len(before.split()) and c.split()[pos] == diff[0][1] for c in caps)
    assert out[6] is None  # no other caption of its template: no swap changes it
    assert near_miss(["a red circle", "a red circle"], 0) == [None, None]  # nothing different to swap in
    assert "a photo of an orange" in near_miss(caps[3:6] * 4, 3)  # the article follows the swapped word
    assert out == near_miss(caps, 0) and any(near_miss(caps * 3, s) != near_miss(caps * 3, 0) for s in (1, 2, 3))
    # function words are never swapped: "a photo" / "the photo" is no near miss
    assert near_miss(["a photo of a shirt", "the photo of a shirt"], 0) == [None, None]


def test_best_cut_maximises_balanced_accuracy_with_each_negative_kind_weighing_the_same():
    pos = [0.9, 0.8, 0.7, 0.6]
    shuffled = [0.1, 0.2, 0.3, 0.0] * 5  # many, easy
    near = [0.55, 0.58, 0.65, 0.3]  # few, hard: they still weigh half of the negatives
    cut = best_cut(pos + shuffled + near, [0] * 4 + [1] * 20 + [3] * 4)
    assert cut["score"] == pytest.approx(0.59)  # between the last near miss under a positive and that positive
    assert cut["balanced_accuracy"] == pytest.approx((1.0 + (1.0 + 0.75) / 2) / 2)
    assert cut["true_positive_rate"] == 1.0 and cut["true_negative_rate"] == {"shuffled": 1.0, "near_miss": 0.75}
    # with the near misses pooled into the 20 easy negatives they would weigh 4/24, not 1/2
    pooled = best_cut(pos + shuffled + near, [0] * 4 + [1] * 24)
    assert pooled["balanced_accuracy"] == pytest.approx((1.0 + 23 / 24) / 2)
    assert best_cut([0.5, 0.4], [0, 0]) is None


def test_near_misses_are_measured_always_and_count_in_the_estimate_and_the_calibration_when_asked():
    colours = ["red", "green", "blue", "yellow"]
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
    shapes = ["circle", "square", "star", "ring", "cross"]
    caps = [f"a {c} {shapes[i % 5]}" for i, c in enumerate(colours * 5)]
    images = [_png(rgb[c]) for c in colours * 5]

    def colour_only(images, captions):  # reads the colour, blind to the shape (like the tiny filter on shapes)
        names = {v: k for k, v in rgb.items()}
        return np.array([float(str(names.get(im.getpixel((8, 8)))) in cap) for im, cap in
                         zip(images, captions, strict=True)])

    reported = HoldoutProbe(HoldoutSplit(0.1), images, caps).evaluate(colour_only)
    assert reported["near_miss_pairs"] > 10 and reported["near_misses_counted"] is False
    # a shuffled caption mostly has another colour: the estimate looks fine (0.9: some share the image's colour)
    assert reported["negatives"] == 20 and reported["estimated_auroc"] == reported["auroc_shuffled"] >= 0.9
    assert reported["auroc_near_miss"] < 0.85  # the shape swaps fool a colour-only filter: the near misses show it
    assert 0 < reported["near_miss_mean"] < 1 and reported["positive_mean"] == 1.0
    counted = HoldoutProbe(HoldoutSplit(0.1), images, caps, near_misses=True).evaluate(colour_only)
    assert counted["negatives"] == 20 + counted["near_miss_pairs"] and counted["near_misses_counted"] is True
    assert counted["estimated_auroc"] < reported["estimated_auroc"]
    # calibrated on near misses, a positive-looking score is less sure to be a match
    p_match = {name: Platt(r["platt"]["a"], r["platt"]["b"]).probability(1.0)
               for name, r in (("reported", reported), ("counted", counted))}
    assert p_match["counted"] < p_match["reported"]
    assert counted["cut"]["probability"] is not None and 0 <= counted["cut"]["balanced_accuracy"] <= 1
    # the web captions' cut leaves the near misses out: only the unrelated (shuffled) captions are its negatives
    web = counted["cut_vs_unrelated"]
    assert set(web["true_negative_rate"]) == {"shuffled"} and set(counted["cut"]["true_negative_rate"]) == {
        "shuffled", "near_miss"}
    assert web["balanced_accuracy"] > counted["cut"]["balanced_accuracy"]  # unrelated captions are easier to reject
    assert reported["cut_vs_unrelated"] == reported["cut"]  # without near misses counted the two cuts agree
