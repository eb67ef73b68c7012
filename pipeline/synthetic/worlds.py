"""The synthetic worlds: what a web's images look like. Defaults are chosen on one world and confirmed on the other.

    shapes   flat coloured shapes (circle, square, triangle, star, cross) on plain, striped or speckled backgrounds
    objects  outlined, shaded icons (house, tree, arrow, ring, heart, moon) on gradients, bokeh, smooth noise,
             grey clutter or sky (`render_objects.py`)

Both produce the same `Scene` record, so captions, noise, duplicates, faults, the test set and the server are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.synthetic import render, render_objects

WORLDS = ("shapes", "objects")


@dataclass(frozen=True)
class World:
    name: str
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    backgrounds: tuple[str, ...]
    sample_scene: Callable
    draw: Callable
    jitter_scene: Callable

    def classnames(self) -> list[str]:
        """Class index -> "<colour> <shape>"."""
        return [f"{colour} {shape}" for colour in self.colours for shape in self.shapes]


def get_world(name: str) -> World:
    if name == "shapes":
        return World("shapes", render.SHAPES, tuple(render.COLOURS), tuple(render.BACKGROUNDS), render.sample_scene,
                     render.draw, render.jitter_scene)
    if name == "objects":
        m = render_objects  # a near duplicate is made the same way in both worlds
        return World("objects", m.OBJECTS, tuple(m.COLOURS), m.BACKGROUNDS, m.sample_scene, m.draw,
                     render.jitter_scene)
    raise ValueError(f"unknown synthetic world {name!r}; known: {', '.join(WORLDS)}")
