"""The worlds: what a web's images look like. Defaults are chosen on one world and confirmed on the others.

    shapes   flat coloured shapes (circle, square, triangle, star, cross) on plain, striped or speckled backgrounds
    objects  outlined, shaded icons (house, tree, arrow, ring, heart, moon) on gradients, bokeh, smooth noise,
             grey clutter or sky (`render_objects.py`)
    fashion  real product photographs, grey (Fashion-MNIST's ten classes; `fashion.py`): pictures our renderer did
             not draw. Needs the photos: `make fashion-data`, or `synthetic.fashion_data`

The rendered worlds produce the same `Scene` record, the fashion world a `FashionScene` with the attributes the
web reads (classname, size, `attributes()`), so noise, duplicates, faults, the test set and the server are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic import captions, render, render_objects

RENDERED = ("shapes", "objects")
WORLDS = (*RENDERED, "fashion")
TINY_SIDES = (4, 16)


@dataclass(frozen=True)
class World:
    name: str
    shapes: tuple[str, ...]  # the fashion world: its classes
    colours: tuple[str, ...]  # empty where the class is not "<colour> <shape>"
    backgrounds: tuple[str, ...]
    sample_scene: Callable
    draw: Callable
    jitter_scene: Callable
    describe: Callable = captions.describe  # (scene, rng, templates) -> a clean caption
    pool_templates: tuple[str, ...] = captions.POOL_TEMPLATES
    hq_templates: tuple[str, ...] = captions.HQ_TEMPLATES
    class_templates: tuple[str, ...] = captions.CLASS_TEMPLATES  # zero-shot prompts
    grey: bool = False  # junk images are grey too, so colour alone does not give them away
    source: str | None = None  # where a world of real photos reads them (fashion)

    def classnames(self) -> list[str]:
        """Class index -> "<colour> <shape>" (rendered worlds) or the class name (fashion)."""
        if not self.colours:
            return list(self.shapes)
        return [f"{colour} {shape}" for colour in self.colours for shape in self.shapes]

    def web_scene(self, seed: int, pool_size: int, split: str, i: int, rng: np.random.Generator, min_side: int,
                  max_side: int):
        """The scene behind the i-th URL of the pool or the hq list."""
        if self.name == "fashion":
            from pipeline.synthetic import fashion

            return fashion.web_scene(self.source, seed, pool_size, split, i, rng, min_side, max_side)
        return self.sample_scene(rng, min_side, max_side)

    def tiny_scene(self, scene, seed: int, i: int):
        """The same kind of picture, a few pixels a side (the pool's `tiny_image` noise)."""
        rng = np.random.default_rng([seed, 31, i])
        if self.name == "fashion":
            from pipeline.synthetic import fashion

            return fashion.tiny_scene(scene, rng, *TINY_SIDES)
        return self.sample_scene(rng, *TINY_SIDES, **{k: v for k, v in scene.attributes().items() if k != "classname"})

    def heldout_scene(self, seed: int, label: int, occurrence: int, rng: np.random.Generator, min_side: int,
                      max_side: int, split: str = "test"):
        """A labelled scene of class `label`, its `occurrence`-th in the set. The fashion world takes the photo
        from `split`: "test" for the web's held-out set, "train" for a bench's labelled training images."""
        if self.name == "fashion":
            from pipeline.synthetic import fashion

            return fashion.heldout_scene(self.source, seed, label, occurrence, rng, min_side, max_side, split)
        colour, shape = self.classnames()[label].split(" ")
        return self.sample_scene(rng, min_side, max_side, shape=shape, colour=colour)


def get_world(name: str, fashion_data: str | None = None) -> World:
    """A world by name; `fashion_data` (the fashion world only) overrides where its photos are read from."""
    if name == "shapes":
        return World("shapes", render.SHAPES, tuple(render.COLOURS), tuple(render.BACKGROUNDS), render.sample_scene,
                     render.draw, render.jitter_scene)
    if name == "objects":
        m = render_objects  # a near duplicate is made the same way in both worlds
        return World("objects", m.OBJECTS, tuple(m.COLOURS), m.BACKGROUNDS, m.sample_scene, m.draw,
                     render.jitter_scene)
    if name == "fashion":
        from pipeline.synthetic import fashion as f

        return World("fashion", f.CLASSES, (), (), _no_free_sampling, f.draw, f.jitter_scene, f.describe,
                     f.FASHION_POOL_TEMPLATES, f.FASHION_HQ_TEMPLATES, f.FASHION_CLASS_TEMPLATES, grey=True,
                     source=f.resolve_source(fashion_data))
    raise ValueError(f"unknown synthetic world {name!r}; known: {', '.join(WORLDS)}")


def _no_free_sampling(*_args, **_kwargs):
    raise TypeError("the fashion world's photos are taken in a fixed order (World.web_scene / heldout_scene), "
                    "not sampled freely")
