"""`winnow sample` on the demo's generator (tiny, trained by its stage): PNGs named by prompt and seed, a grid and the
settings; the same prompt and seed give the same PNG bytes whatever else is in the batch, for the deterministic and
the stochastic samplers; a checkpoint path gives what the stage gives; bad input is one clear error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline.__main__ import main


def sample(demo_models, out: Path, *args: str, stage: bool = True) -> dict:
    source = [demo_models["config"], "--stage", "generator"] if stage else \
        ["--checkpoint", str(demo_models["root"] / "generator")]
    assert main(["sample", *source, *args, "--out", str(out)]) == 0
    return json.loads((out / "samples.json").read_text())


def png(out: Path, prompt_stem: str, seed: int) -> bytes:
    return (out / f"{prompt_stem}_seed{seed}.png").read_bytes()


def test_sample_writes_a_png_per_prompt_and_seed_a_grid_and_its_settings(demo_models, tmp_path):
    record = sample(demo_models, tmp_path / "a", "--prompt", "a red circle", "--prompt", "A blue square!", "--n",
                    "3", "--seed", "5")
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == sorted([f"a-red-circle_seed{s}.png" for s in (5, 6, 7)]
                           + [f"a-blue-square_seed{s}.png" for s in (5, 6, 7)] + ["grid.png"])
    assert [(i["prompt"], i["seed"]) for i in record["images"]] == [
        (p, s) for p in ("a red circle", "A blue square!") for s in (5, 6, 7)]
    assert record["sampler"]["method"] == "heun" and record["sampler"]["churn"] == 4.0  # the stage's sampler
    assert record["stage"] == "generator" and record["network_evaluations_per_image"] == 2 * 4 - 1
    tile = Image.open(tmp_path / "a" / "a-red-circle_seed5.png")
    assert tile.size == (16, 16) and tile.mode == "RGB"
    assert Image.open(tmp_path / "a" / "grid.png").size == (170 + 3 * 50, 2 * 50)  # 3 seeds x 2 prompts, 3x scale
    images = {png(tmp_path / "a", "a-red-circle", s) for s in (5, 6, 7)}
    assert len(images) == 3  # each seed its own picture

    sample(demo_models, tmp_path / "b", "--prompt", "a red circle", "--prompt", "A blue square!", "--n", "3",
           "--seed", "5")
    for f in (tmp_path / "a").iterdir():  # the same command again: the same bytes, the grid and settings included
        assert (tmp_path / "b" / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("sampler", [[], ["--sampler", "euler_maruyama"], ["--sampler", "ddim", "--guidance", "1"]],
                         ids=["heun-with-churn", "euler-maruyama", "ddim"])
def test_an_image_is_the_same_whatever_else_is_in_its_batch(demo_models, tmp_path, sampler):
    """Alone, then third in a batch of six beside another prompt and other seeds: the same PNG bytes, for the
    stochastic samplers too (churn and Euler-Maruyama draw each image's noise from its own seed)."""
    alone = sample(demo_models, tmp_path / "alone", *sampler, "--prompt", "a red circle", "--n", "1", "--seed", "2")
    crowd = sample(demo_models, tmp_path / "crowd", *sampler, "--prompt", "a blue square", "--prompt",
                   "a red circle", "--n", "3", "--batch-size", "6")
    assert alone["sampler"] == crowd["sampler"] and crowd["seeds"] == [0, 1, 2]
    assert png(tmp_path / "alone", "a-red-circle", 2) == png(tmp_path / "crowd", "a-red-circle", 2)
    assert png(tmp_path / "crowd", "a-red-circle", 2) != png(tmp_path / "crowd", "a-red-circle", 1)  # seeds matter


def test_a_checkpoint_path_samples_what_the_stage_samples(demo_models, tmp_path, capsys):
    args = ["--prompt", "a red circle", "--n", "2", "--sampler", "euler", "--steps", "3"]
    by_stage = sample(demo_models, tmp_path / "stage", *args)
    by_path = sample(demo_models, tmp_path / "path", *args, stage=False)
    assert by_path["checkpoint"] == str(demo_models["root"] / "generator")
    assert by_path["sampler"]["method"] == "euler" and by_path["sampler"]["steps"] == 3
    assert by_path["sampler"]["guidance"] == by_stage["sampler"]["guidance"] == 2.0  # recorded in generator.json
    for s in (0, 1):
        assert png(tmp_path / "path", "a-red-circle", s) == png(tmp_path / "stage", "a-red-circle", s)

    # a generator copied elsewhere, its conditioning encoder not where generator.json says: --encoder names it
    moved = tmp_path / "moved"
    shutil.copytree(demo_models["root"] / "generator", moved, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((moved / "generator.json").read_text())
    info["encoder"]["weights"] = str(tmp_path / "gone" / "model.pt")
    (moved / "generator.json").write_text(json.dumps(info))
    argv = ["sample", "--checkpoint", str(moved), *args, "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert re.search(r"which is not there now: give that encoder's weights .* with --encoder", capsys.readouterr().err)
    encoder = str(demo_models["root"] / "train_filter" / "model.pt")
    assert main([*argv, "--encoder", encoder]) == 0
    assert png(tmp_path / "m", "a-red-circle", 0) == png(tmp_path / "stage", "a-red-circle", 0)


def test_bad_sample_arguments_are_one_clear_error(demo_models, tmp_path, capsys):
    cfg = demo_models["config"]
    cases = [
        (["sample", cfg, "--stage", "train_filter", "--prompt", "x"],
         r"--stage train_filter: a train-clip stage; sample names a train-diffusion stage \(here: generator\)"),
        (["sample", cfg, "--stage", "generator"], r"no prompt: give --prompt TEXT"),
        (["sample", "--prompt", "x"], r"give CONFIG --stage NAME, or --checkpoint PATH"),
        (["sample", "--checkpoint", str(demo_models["root"] / "train_filter"), "--prompt", "x"],
         r"--checkpoint: .*train_filter is a winnow encoder \(model_config\.json \+ model\.pt.*\), not a winnow "
         r"generator"),
        (["sample", cfg, "--stage", "generator", "--prompt", "x", "--steps", "0"], r"sampler settings .*steps"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error:") and re.search(message, err), err
