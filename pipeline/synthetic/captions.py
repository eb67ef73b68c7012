"""Captions for rendered scenes: varied clean templates, web-style generic junk, and the zero-shot class prompts.

Every clean template names the colour and the shape by their exact attribute names (tests and filters rely on
it); most also say the size, the position or the background.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.render import Scene

# Fields: {colour} {shape} {size} {pos} (a phrase, e.g. "in the top left") {bg} (a background name).
POOL_TEMPLATES = (
    "a {size} {colour} {shape} {pos}",
    "photo of a {colour} {shape} on a {bg} background",
    "a {size} {colour} {shape}",
    "{colour} {shape}",
    "an image of a {colour} {shape} {pos}",
    "a {colour} {shape} {pos} on a {bg} background",
    "{size} {colour} {shape}, {bg} background",
    "the {colour} {shape}",
    "a picture showing a {size} {colour} {shape}",
    "{colour} {shape} {pos}",
    "a drawing of a {colour} {shape} against a {bg} background",
    "simple {colour} {shape} icon",
    "a {size} {shape} coloured {colour}, {pos}",
    "clip art: {colour} {shape} on {bg}",
    "a {colour} {shape} shape",
    "{size} {colour} {shape} {pos}, {bg} background",
)
# The hq list is described fully: size, colour, shape, and position or background.
HQ_TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "a photo of a {size} {colour} {shape} {pos}",
    "a {size} {colour} {shape} on a {bg} background",
    "an image of a {size} {colour} {shape} {pos}, {bg} background",
    "a {bg} background with a {size} {colour} {shape} {pos}",
)
# Zero-shot prompts for the test set (CLIP convention: the class name fills the braces).
CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "a {} shape.",
)
_POSITION_PHRASES = {
    "top left": ("in the top left", "near the top left corner", "at the top left"),
    "top right": ("in the top right", "near the top right corner", "at the top right"),
    "bottom left": ("in the bottom left", "near the bottom left corner", "at the bottom left"),
    "bottom right": ("in the bottom right", "near the bottom right corner", "at the bottom right"),
    "center": ("in the center", "in the middle", "at the center"),
}
_GENERIC = (
    "image", "untitled", "photo", "picture", "thumbnail", "click here to download", "free download",
    "stock photo", "no description available", "screenshot", "view full size", "image not found",
    "Untitled-1", "placeholder", "img",
)


def article_fix(text: str) -> str:
    """'a orange' -> 'an orange' (templates are written with 'a')."""
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w.lower() == "a" and words[i + 1][:1].lower() in "aeiou":
            words[i] = w[0] + "n"
    return " ".join(words)


def describe(scene: Scene, rng: np.random.Generator, templates: tuple[str, ...] = POOL_TEMPLATES) -> str:
    """A clean caption of a scene, from a random template."""
    template = templates[int(rng.integers(len(templates)))]
    phrases = _POSITION_PHRASES[scene.position]
    text = template.format(colour=scene.colour, shape=scene.shape, size=scene.size, bg=scene.background,
                           pos=phrases[int(rng.integers(len(phrases)))])
    return article_fix(text)


def generic_caption(rng: np.random.Generator) -> str:
    """A caption that says nothing about the image: a camera file name or web boilerplate."""
    kind = int(rng.integers(4))
    if kind == 0:
        return f"IMG_{int(rng.integers(1000, 10000))}.jpg"
    if kind == 1:
        return f"DSC{int(rng.integers(0, 100000)):05d}"
    return _GENERIC[int(rng.integers(len(_GENERIC)))]
