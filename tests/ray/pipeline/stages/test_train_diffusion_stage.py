"""The train-diffusion stage from a pipeline config, on two gloo workers of the session's Ray: both ranks take every
step, the per-t-bin losses cover both ranks' samples, the generator learns colour above chance, `winnow eval` on
the exported EMA weights gives the in-training scores again, and the report shows the run. (Its config and
preflight are tested without Ray in tests/unit/pipeline/stages/test_train_diffusion_config.py.)"""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from training_diffusion import encoders  # noqa: F401  (session fixture: the two tiny CLIPs)
from training_shapes import shapes  # noqa: F401  (session fixture: the pool they were trained on)

from pipeline.cli.evaluate import evaluate_stage
from pipeline.cli.run import run_pipeline
from pipeline.pipeline_config import load_pipeline_config

STEPS, BATCH = 120, 16  # per worker: 32 images a step


def write_config(root: Path, heldout: tuple[str, str], **stage) -> Path:
    shards, classnames = heldout
    body = {"kind": "train-diffusion", "input": "pool", "encoder_from": "cond", "steps": STEPS, "log_every": 20,
            "checkpoint_every": 60, "model": {"layers": 2, "heads": 2, "head_dim": 32, "patch_size": 2},
            "data": {"resolution": 16, "batch_size": BATCH, "loader_workers": 0},
            "sample": {"sampler": {"method": "heun", "steps": 8, "guidance": 3.0}, "seeds_per_prompt": 2},
            "eval": {"judge_from": "judge", "heldout": shards, "classnames": classnames, "frechet_samples": 48,
                     "attribute_seeds": 2, "likelihood": {"samples": 4, "batch_size": 4}},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "max_failures": 0}, **stage}
    encoder = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-clip-rn"}, "objective": "clip"}
    stages = {"cond": encoder, "judge": encoder, "generator": body}
    path = root / f"config-{len(list(root.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": str(root), "stages": stages}))
    return path


@pytest.fixture(scope="module")
def run_root(shapes, encoders, tmp_path_factory) -> tuple[Path, tuple[str, str]]:  # noqa: F811
    """A run root holding the shapes pool and, as stages `cond` and `judge`, the session's two tiny CLIPs (trained on
    that pool, in-process, by train-clip's trainer); the shapes held-out set."""
    root = tmp_path_factory.mktemp("gen")
    shutil.copytree(Path(shapes["root"]) / "pool", root / "pool")
    for stage, ref in (("cond", encoders["conditioner"]), ("judge", encoders["judge"])):
        shutil.copytree(Path(ref.weights).parent, root / stage)
    return root, (shapes["test"], shapes["classnames"])


def test_the_stage_trains_on_two_workers_and_winnow_eval_gives_its_scores_again(ray_local, run_root):
    root, heldout = run_root
    cfg = load_pipeline_config(write_config(root, heldout))
    result = run_pipeline(cfg, "generator")["generator"]
    out = root / "generator"
    assert result["step"] == STEPS and result["samples_seen"] == STEPS * 2 * BATCH
    final = out / "checkpoints" / "step_0000120"
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors", "task_state.safetensors"} <= set(os.listdir(final))
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    assert float(rows[-1]["loss"]) < 0.7 * float(rows[0]["loss"])
    assert all(r[f"loss_t{lo / 5:.1f}-{(lo + 1) / 5:.1f}"] for r in rows for lo in range(5))
    attrs = result["eval"]["attributes"]
    assert attrs["colour_chance"] == 0.25 and attrs["real_colour"] > 0.9  # the judge knows colours
    assert attrs["colour"] >= 0.5, attrs  # twice chance after 120 steps on two workers (measured: 0.625-0.875)
    assert result["judge"]["source"].startswith("stages.judge")

    lk = result["eval"]["likelihood"]  # through the probability-flow ODE, the [-1, 1] scaling counted
    assert 0 < lk["bits_per_dim"] < 12 and lk["samples"] == 4 and "probability-flow ODE" in lk["method"]
    rerun_started = time.time()
    rerun = run_pipeline(cfg, "generator")["generator"]  # finished, same config and encoders: nothing started
    assert rerun["skipped"] == "already complete" and rerun["eval"] == result["eval"]
    assert os.path.getmtime(result["weights"]) < rerun_started  # not exported again
    again = evaluate_stage(cfg, "generator")["generator"]  # `winnow eval`: the exported EMA weights, same seeds
    for key in ("frechet", "attributes", "alignment", "likelihood"):
        numbers = {k: v for k, v in result["eval"][key].items() if isinstance(v, int | float) and k != "seconds"}
        assert {k: again[key][k] for k in numbers} == pytest.approx(numbers, rel=1e-4, abs=1e-6), key

    from pipeline.report import build_report, load_report_data

    html = Path(build_report(cfg, data=load_report_data(cfg, dataset="pool"))).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Text-to-image generator" in text and f"colour accuracy (zero-shot judge) {attrs['colour']:.1%}" in text
