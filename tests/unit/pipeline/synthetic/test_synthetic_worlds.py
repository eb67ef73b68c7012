"""The second synthetic world: its own objects and backgrounds, the same Scene record, a web built from it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.core.config import config_hash
from pipeline.synthetic.config import SyntheticWebConfig
from pipeline.synthetic.render import encode
from pipeline.synthetic.web import VERSION, build_web, web_hash
from pipeline.synthetic.worlds import RENDERED, get_world


@pytest.mark.parametrize("name", RENDERED)
def test_a_world_renders_deterministically_every_class_and_background(name):
    world = get_world(name)
    scenes = [world.sample_scene(np.random.default_rng([3, i]), 48, 96) for i in range(300)]
    assert {s.shape for s in scenes} == set(world.shapes) and {s.colour for s in scenes} == set(world.colours)
    assert {s.background for s in scenes} == set(world.backgrounds)
    again = [world.sample_scene(np.random.default_rng([3, i]), 48, 96) for i in range(5)]
    assert [encode(world.draw(s)) for s in scenes[:5]] == [encode(world.draw(s)) for s in again]
    assert len(world.classnames()) == len(world.shapes) * len(world.colours) == 30


def test_objects_carry_their_colour_and_differ_from_each_other():
    """Within the object's silhouette the named colour dominates; two objects of one colour differ in outline."""
    from pipeline.synthetic.render_objects import COLOURS, _object_mask

    world = get_world("objects")
    masks = {}
    for shape in world.shapes:
        scene = world.sample_scene(np.random.default_rng(0), 96, 96, shape=shape, colour="blue", size="large",
                                   position="center", background="bokeh")
        mask = np.asarray(_object_mask(scene)) > 0
        pixels = np.asarray(world.draw(scene), dtype=float)[mask]
        assert np.abs(pixels.mean(0) - COLOURS["blue"]).max() < 40  # shaded, but blue
        masks[shape] = mask
    shapes = list(masks)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            overlap = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert overlap < 0.75, (a, b, overlap)


def test_a_web_of_the_objects_world_has_its_own_classes_and_the_shapes_hash_is_unchanged(tmp_path):
    cfg = SyntheticWebConfig(world="objects", seed=1, pool_size=60, hq_size=10, test_size=60,
                             oversized_pixels=1_000_000)
    info = build_web(cfg, str(tmp_path))
    assert info["world"] == "objects" and info["classnames"] == get_world("objects").classnames()
    with open(os.path.join(tmp_path, "test", "classnames.json")) as f:
        assert json.load(f)["classnames"][0] == "red house"
    shapes = SyntheticWebConfig(seed=1)  # hashed as before `world` and `fashion_data` existed: old webs stay current
    before = config_hash({**shapes.model_dump(mode="json", exclude={"dir", "world", "fashion_data"}),
                          "version": VERSION})
    assert web_hash(shapes) == before == "4e6113ba45ac13ce"
    assert web_hash(shapes.model_copy(update={"world": "objects"})) == "0a8e5cde5553f296"
    assert web_hash(cfg) != web_hash(cfg.model_copy(update={"world": "shapes"}))
