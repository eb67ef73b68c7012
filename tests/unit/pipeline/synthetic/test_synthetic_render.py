"""Rendering, captions and exact-count assignment of the synthetic web (pure functions, no files)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from pipeline.synthetic.assign import assign_kinds, exact_counts
from pipeline.synthetic.captions import HQ_TEMPLATES, POOL_TEMPLATES, describe, generic_caption
from pipeline.synthetic.render import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    draw,
    encode,
    jitter_scene,
    junk_image,
    sample_scene,
)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_render_is_deterministic_and_seed_sensitive():
    a = [encode(draw(sample_scene(np.random.default_rng([1, i]), 48, 128))) for i in range(20)]
    b = [encode(draw(sample_scene(np.random.default_rng([1, i]), 48, 128))) for i in range(20)]
    c = [encode(draw(sample_scene(np.random.default_rng([2, i]), 48, 128))) for i in range(20)]
    assert a == b
    assert sum(x != y for x, y in zip(a, c, strict=True)) == 20


def test_dims_stay_within_bounds_with_modest_aspect():
    rng = np.random.default_rng(0)
    dims = [sample_scene(rng, 48, 128) for _ in range(500)]
    assert all(48 <= s.width <= 128 and 48 <= s.height <= 128 for s in dims)
    assert max(max(s.width, s.height) / min(s.width, s.height) for s in dims) <= 4 / 3 + 0.03
    assert len({(s.width, s.height) for s in dims}) > 100  # sizes vary
    assert {s.width > s.height for s in dims} == {True, False}  # both orientations


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_colour_is_recognisable_at_the_shape_centre(background):
    """The learnable signal: the pixel colour at the shape's centre is nearest to its own colour's reference."""
    rng = np.random.default_rng(3)
    refs = np.array(list(COLOURS.values()), dtype=float)
    for colour in COLOURS:
        for shape in SHAPES:
            s = sample_scene(rng, 48, 128, shape=shape, colour=colour, background=background)
            arr = np.asarray(draw(s), dtype=float)
            y, x = int(s.cy), int(s.cx)
            patch = arr[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
            assert list(COLOURS)[int(np.argmin(((refs - patch) ** 2).sum(1)))] == colour, (shape, background)


@pytest.mark.parametrize("position", POSITIONS)
def test_position_puts_the_shape_in_its_region(position):
    rng = np.random.default_rng(4)
    for size in ("small", "large"):
        for _ in range(5):
            s = sample_scene(rng, 64, 128, position=position, size=size, background="white")
            arr = np.asarray(draw(s), dtype=int)
            ys, xs = np.nonzero(np.abs(arr - np.array(s.rgb)).sum(-1) < 40)
            fx, fy = xs.mean() / s.width, ys.mean() / s.height
            want_x = 0.5 if position == "center" else (0.0 if "left" in position else 1.0)
            want_y = 0.5 if position == "center" else (0.0 if "top" in position else 1.0)
            assert abs(fx - want_x) < 0.4 and abs(fy - want_y) < 0.4, (position, size, fx, fy)
            if position != "center":
                assert (fx < 0.5) == ("left" in position) and (fy < 0.5) == ("top" in position)


def test_shapes_have_distinct_masks():
    base = sample_scene(np.random.default_rng(5), 128, 128, size="large", position="center", background="white")
    masks = {}
    for shape in SHAPES:
        s = base.__class__(**{**base.__dict__, "shape": shape, "angle": 0.0})
        masks[shape] = np.abs(np.asarray(draw(s), dtype=int) - np.array(s.rgb)).sum(-1) < 40
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)


def test_near_duplicate_scene_keeps_attributes_and_changes_pixels():
    rng = np.random.default_rng(6)
    for _ in range(20):
        s = sample_scene(rng, 48, 128)
        j = jitter_scene(s, rng)
        assert j.attributes() == s.attributes()
        assert abs(j.width / s.width - 1) <= 0.11 and abs(j.cx / j.width - s.cx / s.width) < 0.05
        assert encode(draw(j)) != encode(draw(s))


def test_junk_images_and_encodings():
    rng = np.random.default_rng(7)
    imgs = [junk_image(rng, 40, 30) for _ in range(12)]
    assert all(im.size == (40, 30) for im in imgs)
    stds = [np.asarray(im, dtype=float).reshape(-1, 3).std(0).max() for im in imgs]
    assert min(stds) < 1 and max(stds) > 50  # flat ones and noisy ones
    assert encode(imgs[0], "jpg").startswith(b"\xff\xd8") and encode(imgs[0], "png").startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        encode(imgs[0], "gif")


def test_rendering_is_fast():
    rng = np.random.default_rng(8)
    t0 = time.perf_counter()
    for _ in range(300):
        encode(draw(sample_scene(rng, 48, 128)), "jpg", 90)
    assert time.perf_counter() - t0 < 1.5  # ~0.1 s on one core; the bound only catches a pathological slowdown


@pytest.mark.parametrize("templates", [POOL_TEMPLATES, HQ_TEMPLATES], ids=["pool", "hq"])
def test_every_template_names_colour_and_shape(templates):
    rng = np.random.default_rng(9)
    for template in templates:
        for _ in range(15):
            s = sample_scene(rng, 48, 128)
            text = describe(s, rng, (template,))
            w = words(text)
            assert w & set(COLOURS) == {s.colour} and w & set(SHAPES) == {s.shape}, text
            assert not re.search(r"\ba [aeiou]", text), text  # articles fixed: "an orange", "an image"
            if templates is HQ_TEMPLATES:
                assert s.size in w


def test_pool_captions_vary():
    rng = np.random.default_rng(10)
    s = sample_scene(rng, 48, 128)
    assert len({describe(s, rng) for _ in range(300)}) >= 20
    assert len(POOL_TEMPLATES) >= 12


def test_generic_captions_say_nothing_about_the_image():
    rng = np.random.default_rng(11)
    caps = [generic_caption(rng) for _ in range(300)]
    assert len(set(caps)) > 50
    assert all(not (words(c) & (set(COLOURS) | set(SHAPES))) for c in caps)


def test_exact_counts_round_and_never_overshoot():
    assert exact_counts({"a": 0.15, "b": 0.08, "c": 0.003}, 400) == {"a": 60, "b": 32, "c": 1}
    counts = exact_counts({"a": 0.5, "b": 0.5}, 3)  # round(1.5) twice would be 4 > 3
    assert sum(counts.values()) == 3


def test_assign_kinds_places_exact_disjoint_counts_at_random():
    rates = {"x": 0.1, "y": 0.25}
    a = assign_kinds(rates, 1000, np.random.default_rng(0))
    b = assign_kinds(rates, 1000, np.random.default_rng(1))
    assert (a.count("x"), a.count("y"), a.count("none")) == (100, 250, 650)
    assert a != b and sorted(a) == sorted(b)
    first = [i for i, k in enumerate(a) if k == "x"]
    assert first[0] < 100 and first[-1] > 900  # spread over the list, not a block
