"""Rendered images of coloured shapes: the learnable signal of the synthetic web.

A `Scene` holds everything needed to draw one image (attributes plus the jitter drawn for it), so the same scene
always gives the same pixels and a near duplicate is a slightly perturbed scene. All randomness comes from the
numpy Generator passed in.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 215, 20),
    "purple": (135, 45, 190),
    "orange": (250, 130, 15),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
# name -> base RGB; "striped" and "speckled" add a light texture on top of the base.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "black": (12, 12, 12),
    "striped": (235, 235, 235),
    "speckled": (200, 200, 200),
}
# Shape radius as a fraction of the short side, and where its centre sits (fraction of each side) per position.
_RADIUS = {"small": (0.16, 0.21), "large": (0.30, 0.36)}
_CENTRE = {"small": (0.27, 0.73), "large": (0.36, 0.64)}
_COLOUR_JITTER = 18  # +- per channel: colours vary a little, never enough to be confused with a neighbour


@dataclass(frozen=True)
class Scene:
    """One image to draw: its attributes and the concrete geometry and colours drawn for them."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    width: int
    height: int
    cx: float  # shape centre, pixels
    cy: float
    radius: float  # circumradius, pixels
    angle: float  # rotation, degrees
    rgb: tuple[int, int, int]  # jittered shape colour
    texture_seed: int

    @property
    def classname(self) -> str:
        return f"{self.colour} {self.shape}"

    def attributes(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
                "background": self.background, "classname": self.classname}


def image_dims(rng: np.random.Generator, min_side: int, max_side: int, max_aspect: float = 4 / 3) -> tuple[int, int]:
    """(width, height) with both sides in [min_side, max_side] and a modest aspect ratio."""
    short = int(rng.integers(min_side, max_side + 1))
    long = min(max_side, int(round(short * rng.uniform(1.0, max_aspect))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _pick(rng: np.random.Generator, options, given: str | None) -> str:
    return given if given is not None else options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class SceneSpace:
    """What a world's scenes are drawn from: its vocabulary, and where and how big its objects sit."""

    shapes: tuple[str, ...]
    colours: dict[str, tuple[int, int, int]]
    backgrounds: tuple[str, ...]
    radius: dict[str, tuple[float, float]]  # size -> circumradius range, fraction of the short side
    centre: dict[str, tuple[float, float]]  # size -> (near, far) centre fraction of a side, for corner positions
    colour_jitter: int  # +- per channel
    max_angle: float  # rotation range, degrees


def sample_in(space: SceneSpace, rng: np.random.Generator, min_side: int, max_side: int, *, shape: str | None = None,
              colour: str | None = None, size: str | None = None, position: str | None = None,
              background: str | None = None) -> Scene:
    """A random scene of a world; any attribute given is kept, the others are drawn uniformly."""
    shape = _pick(rng, space.shapes, shape)
    colour = _pick(rng, list(space.colours), colour)
    size = _pick(rng, SIZES, size)
    position = _pick(rng, POSITIONS, position)
    background = _pick(rng, list(space.backgrounds), background)
    width, height = image_dims(rng, min_side, max_side)
    radius = rng.uniform(*space.radius[size]) * min(width, height)
    lo, hi = space.centre[size]
    fx = 0.5 if position == "center" else (lo if "left" in position else hi)
    fy = 0.5 if position == "center" else (lo if "top" in position else hi)
    cx = (fx + rng.uniform(-0.03, 0.03)) * width
    cy = (fy + rng.uniform(-0.03, 0.03)) * height
    j = space.colour_jitter
    rgb = tuple(int(np.clip(c + rng.integers(-j, j + 1), 0, 255)) for c in space.colours[colour])
    return Scene(shape, colour, size, position, background, width, height, float(cx), float(cy), float(radius),
                 float(rng.uniform(-space.max_angle, space.max_angle)), rgb, int(rng.integers(2**31)))


SPACE = SceneSpace(SHAPES, COLOURS, tuple(BACKGROUNDS), _RADIUS, _CENTRE, _COLOUR_JITTER, 15.0)


def sample_scene(rng: np.random.Generator, min_side: int, max_side: int, **given: str | None) -> Scene:
    """A random scene of the shapes world; any attribute given (shape, colour, size, position, background) is
    kept, the others are drawn uniformly."""
    return sample_in(SPACE, rng, min_side, max_side, **given)


def jitter_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """A near duplicate: same attributes, shape nudged by a few percent, colour by a few levels, maybe rescaled."""
    scale = rng.uniform(0.9, 1.1) if rng.random() < 0.5 else 1.0
    w = max(4, int(round(scene.width * scale)))
    h = max(4, int(round(scene.height * scale)))
    s = min(w, h)
    rgb = tuple(int(np.clip(c + rng.integers(-6, 7), 0, 255)) for c in scene.rgb)
    return replace(scene, width=w, height=h, cx=scene.cx * w / scene.width + rng.uniform(-0.02, 0.02) * s,
                   cy=scene.cy * h / scene.height + rng.uniform(-0.02, 0.02) * s,
                   radius=scene.radius * scale * rng.uniform(0.97, 1.03), angle=scene.angle + rng.uniform(-4, 4),
                   rgb=rgb)


def _polygon(scene: Scene) -> list[tuple[float, float]]:
    r, a0 = scene.radius, math.radians(scene.angle)
    if scene.shape == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif scene.shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif scene.shape == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))]
    elif scene.shape == "cross":
        t = 0.33 * r  # half the arm width
        pts = [(t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t),
               (-t, -r)]
    else:
        raise ValueError(f"not a polygon shape: {scene.shape!r}")
    c, s = math.cos(a0), math.sin(a0)
    return [(scene.cx + x * c - y * s, scene.cy + x * s + y * c) for x, y in pts]


def _background(scene: Scene) -> Image.Image:
    w, h = scene.width, scene.height
    base = BACKGROUNDS[scene.background]
    if scene.background == "speckled":
        rng = np.random.default_rng(scene.texture_seed)
        grain = rng.integers(-28, 29, size=(h, w, 1), dtype=np.int16)
        arr = np.clip(np.asarray(base, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB")
    img = Image.new("RGB", (w, h), base)
    if scene.background == "striped":
        draw = ImageDraw.Draw(img)
        period = 4 + scene.texture_seed % 5
        for x in range(-h, w, period):  # diagonal stripes
            draw.line([(x, h), (x + h, 0)], fill=(205, 205, 215), width=max(1, period // 3))
    return img


def draw(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    img = _background(scene)
    d = ImageDraw.Draw(img)
    if scene.shape == "circle":
        r = scene.radius
        d.ellipse([scene.cx - r, scene.cy - r, scene.cx + r, scene.cy + r], fill=scene.rgb)
    else:
        d.polygon(_polygon(scene), fill=scene.rgb)
    return img


def junk_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Not a picture of anything: uniform noise, a flat colour, or a blurry colour gradient."""
    kind = int(rng.integers(3))
    if kind == 0:
        arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    elif kind == 1:
        arr = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), (height, width, 3))
    else:
        a, b = rng.integers(0, 256, size=(2, 3))
        t = np.linspace(0, 1, width)[None, :, None]
        arr = np.broadcast_to(a + (b - a) * t, (height, width, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def encode(img: Image.Image, fmt: str = "jpg", quality: int = 90) -> bytes:
    """JPEG (`jpg`) or PNG bytes; deterministic for the same image and settings."""
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()
