"""The second synthetic world, "objects": outlined icons (house, tree, arrow, ring, heart, moon) on photographic-style
backgrounds (gradients, bokeh, smooth noise, clutter of grey distractors, sky), so that a default chosen on the flat
"shapes" world is confirmed on a world that looks different.

What makes it harder than the shapes world, on purpose: the background is never flat (a model cannot find the object
by "the pixels that are not the background colour"), distractor shapes clutter some scenes, objects are shaded and
outlined rather than flat fills, and the classes differ in structure (a house and a tree are composed of parts) as
well as outline. A `Scene` is the same record as the shapes world's (its `shape` is the object's name), so captions,
duplicates, the test set and the server work unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.synthetic.render import Scene, SceneSpace, sample_in

OBJECTS = ("house", "tree", "arrow", "ring", "heart", "moon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 40),
    "green": (35, 165, 60),
    "blue": (35, 80, 220),
    "yellow": (240, 205, 25),
    "pink": (240, 110, 185),
}
BACKGROUNDS = ("gradient", "bokeh", "noise", "cluttered", "sky")
_RADIUS = {"small": (0.17, 0.22), "large": (0.30, 0.36)}
_CENTRE = {"small": (0.28, 0.72), "large": (0.37, 0.63)}
_MUTED = [(118, 112, 104), (96, 104, 110), (140, 132, 120), (84, 92, 84), (150, 150, 140)]


SPACE = SceneSpace(OBJECTS, COLOURS, BACKGROUNDS, _RADIUS, _CENTRE, colour_jitter=14, max_angle=12.0)


def sample_scene(rng: np.random.Generator, min_side: int, max_side: int, **given: str | None) -> Scene:
    """A random scene of this world; any attribute given is kept, the others are drawn uniformly."""
    return sample_in(SPACE, rng, min_side, max_side, **given)


# --- backgrounds ------------------------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int, lo: int, hi: int) -> np.ndarray:
    """A smooth random RGB field: a coarse random grid upsampled bicubically (photo-like low frequencies)."""
    grid = rng.integers(lo, hi, size=(cells, cells + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid, "RGB").resize((w, h), Image.BICUBIC), dtype=np.int16)


def _background(scene: Scene) -> Image.Image:
    rng = np.random.default_rng(scene.texture_seed)
    w, h, kind = scene.width, scene.height, scene.background
    if kind == "gradient":
        a, b = rng.integers(70, 200, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        arr = a + (b - a) * t[..., None]
    elif kind == "bokeh":
        arr = _smooth_field(rng, w, h, 3, 60, 170).astype(float)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(5, 10))):
            r = rng.uniform(0.06, 0.2) * min(w, h)
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(120, 230, 3)))
        return img.filter(ImageFilter.GaussianBlur(radius=max(1.5, min(w, h) / 20)))
    elif kind == "noise":  # a busy texture, half desaturated so that it reads as texture, not as objects
        field = _smooth_field(rng, w, h, 6, 50, 200)
        arr = 0.5 * field + 0.5 * field.mean(axis=2, keepdims=True) + rng.integers(-18, 19, size=(h, w, 1))
    elif kind == "cluttered":
        arr = _smooth_field(rng, w, h, 2, 150, 215)
    else:  # sky: blue above, pale below, soft clouds
        top, bottom = np.array([95, 150, 215]), np.array([220, 230, 240])
        t = np.linspace(0, 1, h)[:, None, None]
        arr = top + (bottom - top) * t + np.zeros((h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 5))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h * 0.6), rng.uniform(0.08, 0.16) * min(w, h)
            d.ellipse([x - 2 * r, y - r, x + 2 * r, y + r], fill=(245, 245, 248))
        return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(w, h) / 30)))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if kind == "cluttered":  # muted distractors: grey squares, bars and dots that are not the object
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(4, 8))):
            r = rng.uniform(0.05, 0.12) * min(w, h)
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            fill = _MUTED[int(rng.integers(len(_MUTED)))]
            if rng.random() < 0.5:
                d.rectangle([x - r, y - r / 2, x + r, y + r / 2], fill=fill)
            else:
                d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    return img


# --- objects -----------------------------------------------------------------------------------------------------
def _rotate(points: list[tuple[float, float]], scene: Scene) -> list[tuple[float, float]]:
    a = math.radians(scene.angle)
    c, s = math.cos(a), math.sin(a)
    return [(scene.cx + x * c - y * s, scene.cy + x * s + y * c) for x, y in points]


def _object_mask(scene: Scene) -> Image.Image:
    """The object's silhouette as an L-mode mask (255 inside)."""
    w, h, r = scene.width, scene.height, scene.radius
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    poly = lambda pts: d.polygon(_rotate(pts, scene), fill=255)  # noqa: E731
    if scene.shape == "house":
        poly([(-0.7 * r, -0.05 * r), (0.7 * r, -0.05 * r), (0.7 * r, 0.9 * r), (-0.7 * r, 0.9 * r)])
        poly([(-0.95 * r, 0.0), (0.0, -0.95 * r), (0.95 * r, 0.0)])
        door = _rotate([(-0.18 * r, 0.35 * r), (0.18 * r, 0.35 * r), (0.18 * r, 0.9 * r), (-0.18 * r, 0.9 * r)], scene)
        d.polygon(door, fill=0)
    elif scene.shape == "tree":
        poly([(-0.16 * r, 0.2 * r), (0.16 * r, 0.2 * r), (0.16 * r, r), (-0.16 * r, r)])
        (x, y), cr = _rotate([(0.0, -0.28 * r)], scene)[0], 0.62 * r
        d.ellipse([x - cr, y - cr, x + cr, y + cr], fill=255)
    elif scene.shape == "arrow":
        poly([(-r, -0.18 * r), (0.2 * r, -0.18 * r), (0.2 * r, 0.18 * r), (-r, 0.18 * r)])
        poly([(0.1 * r, -0.6 * r), (r, 0.0), (0.1 * r, 0.6 * r)])
    elif scene.shape == "ring":
        d.ellipse([scene.cx - r, scene.cy - r, scene.cx + r, scene.cy + r], fill=255)
        d.ellipse([scene.cx - 0.55 * r, scene.cy - 0.55 * r, scene.cx + 0.55 * r, scene.cy + 0.55 * r], fill=0)
    elif scene.shape == "heart":
        for lx in (-0.45, 0.45):
            (x, y), cr = _rotate([(lx * r, -0.3 * r)], scene)[0], 0.5 * r
            d.ellipse([x - cr, y - cr, x + cr, y + cr], fill=255)
        poly([(-0.93 * r, -0.15 * r), (0.93 * r, -0.15 * r), (0.0, 0.95 * r)])
    elif scene.shape == "moon":
        d.ellipse([scene.cx - r, scene.cy - r, scene.cx + r, scene.cy + r], fill=255)
        (x, y) = _rotate([(0.45 * r, -0.2 * r)], scene)[0]
        d.ellipse([x - 0.8 * r, y - 0.8 * r, x + 0.8 * r, y + 0.8 * r], fill=0)
    else:
        raise ValueError(f"unknown object {scene.shape!r}; known: {', '.join(OBJECTS)}")
    return mask


def draw(scene: Scene) -> Image.Image:
    """The RGB image of a scene: background, then the object shaded top-to-bottom with a dark outline."""
    img = _background(scene)
    mask = _object_mask(scene)
    w, h = scene.width, scene.height
    shade = np.linspace(1.12, 0.82, h)[:, None, None]  # lit from above
    fill = Image.fromarray(np.clip(np.asarray(scene.rgb) * shade * np.ones((h, w, 3)), 0, 255).astype(np.uint8))
    edge = mask.filter(ImageFilter.MaxFilter(3))
    img.paste(Image.new("RGB", (w, h), (25, 25, 30)), (0, 0), edge)  # outline: the dilated mask, dark
    img.paste(fill, (0, 0), mask)
    return img
