"""How well synthetic captions say what the synthetic web's images show, checked against its ground truth
(truth.parquet): per attribute, the share of captions that name the image's value and no other value, beside
chance (one over the world's values). The rendered worlds have two attributes, colour and shape; the fashion world
one, its class. A captioner that has not learnt an attribute writes fluent captions with a random value there, so
its accuracy sits at chance: that is what turns its captions into near misses a filter must catch.

Used by `winnow eval` (the caption stage's evaluation), the report's CapFilt section and bench/capfilt_quality.py.
Also counted, truth or not: images captioned, synthetic captions, distinct caption texts (a captioner that writes
one caption for every image has learnt the web's prior, not its images).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable

TRUTH = "truth.parquet"


def named(caption: str, names) -> list[str]:
    """The names a caption says, as whole words ("shirt" is not found in "t-shirt"; "ankle boot" is one name). The
    captioner's detokenizer writes "t - shirt": spaces around a hyphen are closed first."""
    text = re.sub(r"\s*-\s*", "-", caption.lower())
    return [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


def names_each(caption: str, colour: str | None, shape: str | None, world) -> tuple[bool | None, bool | None]:
    """Whether a caption names the image's colour (alone; None in a world without colours), and its shape or class
    (alone); (None, None) for an image with neither (a junk image)."""
    if shape is None or (colour is None and world.colours):
        return None, None
    return (named(caption, world.colours) == [colour] if world.colours else None,
            named(caption, world.shapes) == [shape])


def names_truth(caption: str, colour: str | None, shape: str | None, world) -> bool:
    """A caption is right when it names the image's colour and shape, and no other colour or shape (a world without
    colours, fashion: its class, and no other). Never right for a junk image."""
    if not caption:
        return False
    c, s = names_each(caption, colour, shape, world)
    return bool(s) and c is not False


def attribute_names(world) -> tuple[str, str]:
    """The names of the world's two attributes as reports say them: (colour, shape), or (colour, class)."""
    return "colour", ("shape" if world.colours else "class")


def caption_accuracy(captions: Iterable[tuple[str, list[str]]], world=None,
                     truth: dict[str, tuple[str | None, str | None]] | None = None) -> dict:
    """Per (uid, its synthetic captions): images captioned, captions, distinct texts, the most written ones; with
    the world and its truth (uid -> (colour, shape)), the share of captions right and per attribute the share naming
    the image's value alone, with chance. Junk images (no shape) count in `right` (never right), not per attribute."""
    texts, images, right = Counter(), 0, []
    per: dict[str, list[bool]] = {"colour": [], "shape": []}
    for uid, caps in captions:
        caps = [str(c) for c in caps or [] if c is not None]
        images += bool(caps)
        texts.update(caps)
        if truth is None or world is None or uid not in truth:
            continue
        colour, shape = truth[uid]
        for c in caps:
            right.append(names_truth(c, colour, shape, world))
            ok_colour, ok_shape = names_each(c, colour, shape, world)
            if ok_colour is not None:
                per["colour"].append(ok_colour)
            if ok_shape is not None:
                per["shape"].append(ok_shape)
    out = {"images_captioned": images, "synthetic_captions": sum(texts.values()), "distinct_captions": len(texts),
           "most_common": [[t, n] for t, n in texts.most_common(3)]}
    if truth is None or world is None:
        return out
    colour_name, shape_name = attribute_names(world)
    values = {"colour": world.colours, "shape": world.shapes}
    out.update({"world": world.name, "right": sum(right) / len(right) if right else None, "attributes": {
        name: {"accuracy": sum(per[key]) / len(per[key]) if per[key] else None, "captions": len(per[key]),
               "chance": 1 / len(values[key])}
        for key, name in (("colour", colour_name), ("shape", shape_name)) if values[key]}})
    return out


def read_truth(web_dir: str) -> tuple[object, dict[str, tuple[str | None, str | None]]] | None:
    """(world, uid -> (colour, shape)) of a built synthetic web; None where there is no web with a truth table."""
    import pyarrow.parquet as pq

    from pipeline.core.layout import read_json
    from pipeline.synthetic.worlds import get_world

    path = os.path.join(web_dir, TRUTH)
    if not os.path.exists(path) or not os.path.exists(os.path.join(web_dir, "web.json")):
        return None
    world = get_world(read_json(os.path.join(web_dir, "web.json")).get("world") or "shapes")
    t = pq.read_table(path, columns=["uid", "colour", "shape"]).to_pydict()
    return world, {u: (c, s) for u, c, s in zip(t["uid"], t["colour"], t["shape"], strict=True)}


def table_accuracy(captions, web_dir: str | None = None) -> dict:
    """`caption_accuracy` of a caption stage's table (uid, decodable, reason, synthetic_captions: the images it
    captioned), checked against the truth of the web in `web_dir` where there is one."""
    cols = captions.select(["uid", "decodable", "reason", "synthetic_captions"]).to_pydict()
    rows = [(u, c) for u, d, r, c in zip(cols["uid"], cols["decodable"], cols["reason"], cols["synthetic_captions"],
                                         strict=True) if d and not r]
    found = read_truth(web_dir) if web_dir else None
    return caption_accuracy(rows, *(found or (None, None)))


def accuracy_line(acc: dict) -> str:
    """One line: per attribute, accuracy (chance); then distinct captions of images captioned."""
    parts = [f"{name} {a['accuracy']:.1%} (chance {a['chance']:.1%})" for name, a in
             (acc.get("attributes") or {}).items() if a.get("accuracy") is not None]
    parts.append(f"{acc['distinct_captions']} distinct captions for {acc['images_captioned']} images")
    return "; ".join(parts)
