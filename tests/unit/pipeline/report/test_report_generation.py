"""The report's generator section: the final grid and curves inline, each score beside its reference, and a later
`winnow eval` preferred over the scores measured at the end of training."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from pipeline.report import SECTIONS
from pipeline.report.data import ReportData
from pipeline.report.generation import section

SCORES = {"attributes": {"colour": 0.8125, "colour_chance": 1 / 6, "shape": 0.45, "shape_chance": 0.2, "both": 0.4,
                         "both_chance": 1 / 30, "images": 60, "real_colour": 0.98, "real_shape": 0.71,
                         "real_both": 0.7, "real_images": 200},
          "frechet": {"fd": 0.4321, "fd_real_halves": 0.0612, "samples": 200, "dims": 64},
          "alignment": {"score": 30.5, "real_score": 45.25, "pairs": 200},
          "heldout": {"loss": 0.3456, "images": 64}}


def run_dir(root: Path, evaluation: dict) -> None:
    out = root / "generator"
    (out / "samples").mkdir(parents=True)
    Image.new("RGB", (8, 4), (255, 0, 0)).save(out / "samples" / "step_0000500.png")
    Image.new("RGB", (4, 4), (0, 0, 255)).save(out / "curves.png")
    record = {"kind": "train-diffusion", "step": 500, "input": {"dataset": "curated", "shards": 2},
              "config": {"model": {"kind": "mmdit", "layers": 4, "heads": 4, "head_dim": 32},
                         "diffusion": {"family": "flow"}, "data": {"batch_size": 64}},
              "encoder": {"source": "stages.train (model.name tiny-clip-rn)"},
              "judge": {"source": "stages.train_filter (model.name tiny-clip-rn)"},
              "grid": str(out / "samples" / "step_0000500.png"), "eval": evaluation}
    (out / "train.json").write_text(json.dumps(record))


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_section_shows_the_grid_the_curves_and_each_score_with_its_reference(tmp_path):
    run_dir(tmp_path, SCORES)
    html = section(ReportData.load(str(tmp_path), "pool"))
    assert html.count('src="data:image/png;base64,') == 2
    text = text_of(html)
    assert "mmdit 4 layers x 128, flow objective, 500 steps x 64 on curated" in text
    assert "conditioned on stages.train (model.name tiny-clip-rn), judged by stages.train_filter" in text
    assert "colour accuracy (zero-shot judge) 81.2% chance 16.7%; the judge on real images 98.0%" in text
    assert "shape accuracy (zero-shot judge) 45.0% chance 20.0%; the judge on real images 71.0%" in text
    assert "Frechet distance 0.4321 two halves of the real set: 0.0612 (200 images, 64 dims)" in text
    assert "image-text alignment (cos x 100) 30.50 real pairs 45.25" in text
    assert ("generation", "Text-to-image generator", section) in SECTIONS


def test_a_later_winnow_eval_replaces_the_end_of_training_scores(tmp_path):
    run_dir(tmp_path, SCORES)
    later = {**SCORES, "frechet": {**SCORES["frechet"], "fd": 0.2222}}
    (tmp_path / "generator" / "eval.json").write_text(json.dumps(later))
    text = text_of(section(ReportData.load(str(tmp_path), "pool")))
    assert "Frechet distance 0.2222" in text and "0.4321" not in text
    assert section(ReportData.load(str(tmp_path / "empty"), "pool")) is None  # no generator: no section


def test_a_flow_run_shows_its_grid_and_bits_per_dim_beside_the_sample_scores(tmp_path):
    run_dir(tmp_path, {**SCORES, "likelihood": {"bits_per_dim": 5.1234, "bits_per_dim_sem": 0.0312, "samples": 32,
                                                "preprocess": "signed_unit", "method": "exact change of variables"}})
    path = tmp_path / "generator" / "train.json"
    record = json.loads(path.read_text())
    record["config"]["model"] = {"kind": "glow", "levels": 2, "steps_per_level": 4, "hidden": 64,
                                 "conditioning": "class"}
    record["encoder"] = None
    path.write_text(json.dumps(record))
    html = section(ReportData.load(str(tmp_path), "pool"))
    text = text_of(html)
    assert "glow normalizing flow, 2 levels x 4 steps (hidden 64), conditioning class, maximum likelihood" in text
    assert ("held-out bits/dim 5.123 ± 0.031 a uniform model 8; 32 images, signed_unit preprocessing counted; exact "
            "change of variables") in text
    assert "Frechet distance 0.4321" in text and html.count('src="data:image/png;base64,') == 2
