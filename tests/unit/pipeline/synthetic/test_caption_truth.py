"""Per-attribute caption accuracy against the synthetic web's truth: names as whole words, each attribute alone,
junk images never right, chance per world, and the counts that need no truth."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.synthetic.caption_truth import (
    accuracy_line,
    caption_accuracy,
    named,
    names_each,
    names_truth,
    read_truth,
)
from pipeline.synthetic.worlds import get_world


def test_names_are_whole_words_and_a_caption_is_right_naming_the_truth_alone():
    shapes, fashion = get_world("shapes"), get_world("fashion")
    assert named("a t - shirt on black", fashion.shapes) == ["t-shirt"]  # not "shirt": the hyphen is closed first
    assert named("an ankle boot", fashion.shapes) == ["ankle boot"]
    assert names_truth("a t - shirt", None, "t-shirt", fashion)
    assert not names_truth("a shirt", None, "t-shirt", fashion)
    colour, shape = shapes.colours[0], shapes.shapes[0]
    other = shapes.shapes[1]
    assert names_each(f"a {colour} {shape}", colour, shape, shapes) == (True, True)
    assert names_each(f"a {colour} {other}", colour, shape, shapes) == (True, False)
    assert not names_truth(f"a {colour} {other}", colour, shape, shapes)
    assert not names_truth(f"a {colour} {shape} and a {other}", colour, shape, shapes)  # another shape named too
    assert names_each(f"a {colour} {shape}", None, None, shapes) == (None, None)  # a junk image: nothing to name
    assert not names_truth(f"a {colour} {shape}", None, None, shapes)
    assert names_each("a bag", None, "bag", fashion) == (None, True)  # no colours in the fashion world


def test_accuracy_per_attribute_against_chance_and_the_counts():
    w = get_world("shapes")
    red, blue = w.colours[0], w.colours[1]
    a, b = w.shapes[0], w.shapes[1]
    truth = {"u0": (red, a), "u1": (blue, b), "u2": (None, None)}
    rows = [("u0", [f"a {red} {a}", f"a {red} {b}"]), ("u1", [f"a {red} {b}"]), ("u2", [f"a {red} {a}"]),
            ("u3", [])]
    acc = caption_accuracy(rows, w, truth)
    assert acc["images_captioned"] == 3 and acc["synthetic_captions"] == 4 and acc["distinct_captions"] == 2
    assert acc["most_common"][0] == [f"a {red} {a}", 2]
    assert acc["attributes"]["colour"] == {"accuracy": pytest.approx(2 / 3), "captions": 3,
                                           "chance": pytest.approx(1 / len(w.colours))}
    assert acc["attributes"]["shape"]["accuracy"] == pytest.approx(2 / 3)
    assert acc["right"] == pytest.approx(1 / 4)  # u0's first only; the junk image's caption is never right
    assert "colour 66.7% (chance" in accuracy_line(acc) and "2 distinct captions for 3 images" in accuracy_line(acc)
    counts = caption_accuracy(rows)  # no truth: the counts alone
    assert "attributes" not in counts and counts["distinct_captions"] == 2
    fashion = caption_accuracy([("u0", ["a bag"])], get_world("fashion"), {"u0": (None, "bag")})
    assert list(fashion["attributes"]) == ["class"] and fashion["attributes"]["class"]["chance"] == 0.1


def test_read_truth_needs_a_built_web(tmp_path):
    assert read_truth(str(tmp_path)) is None
    (tmp_path / "web.json").write_text('{"world": "objects"}')
    pq.write_table(pa.table({"uid": ["u"], "colour": ["red"], "shape": ["cup"], "noise": ["none"]}),
                   tmp_path / "truth.parquet")
    world, truth = read_truth(str(tmp_path))
    assert world.name == "objects" and truth == {"u": ("red", "cup")}
