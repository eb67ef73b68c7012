"""A task defined outside `training/` (`tests/training_mean_colour.py`) trains on the engine in-process: its loss
falls, it checkpoints and resumes, its EMA (extra task state) is saved in checkpoints and restored on resume, and
gradient accumulation matches one larger batch."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from safetensors.torch import load_file
from training_mean_colour import MeanColourTask, load_images, mean_colour

from training.engine import fit
from training.engine.checkpoint import TASK_STATE, step_dir_name
from training.engine.config import EngineConfig


def engine_cfg(steps: int, **top) -> EngineConfig:
    return EngineConfig.model_validate({
        "steps": steps, "log_every": 10, "checkpoint_every": 20, "optim": {"lr": 0.03, "warmup_steps": 5,
                                                                           **top.pop("optim", {})},
        "scaling": {"num_workers": 0, "torch_threads": 1}, **top})


def logged(out_dir, key: str = "loss") -> list[tuple[int, float]]:
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_a_new_task_trains_in_process_and_a_rerun_resumes_it(shapes, tmp_path):
    task = MeanColourTask(shapes["pool"], shapes["test"])
    result = fit(task, engine_cfg(60), str(tmp_path))
    losses = [loss for _, loss in logged(tmp_path)]
    assert result["step"] == 60 and result["samples_seen"] == 60 * 16 and result["resumed_from"] == []
    assert task.updates == 60
    assert losses[-1] <= 0.01 * losses[0], losses
    # the held-out error of the EMA weights is far below predicting the average colour (the targets' variance)
    heldout = mean_colour(load_images([shapes["test"]]))
    assert result["eval"]["colour"]["mse"] < 0.2 * float(heldout.var(dim=0).mean())
    assert result["metrics"]["step"] == 60 and result["metrics"]["loss"] == pytest.approx(losses[-1])
    assert result["weights"] == str(tmp_path / "mean_colour.safetensors") and os.path.isfile(result["weights"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [step_dir_name(40), step_dir_name(60)]
    assert {"metrics.csv", "eval.json", "curves.png", "tb"} <= set(os.listdir(tmp_path))

    again = MeanColourTask(shapes["pool"], shapes["test"])
    result = fit(again, engine_cfg(80), str(tmp_path))  # the same call with more steps
    assert result["step"] == 80 and result["samples_seen"] == 80 * 16 and result["resumed_from"] == [60]
    assert again.updates == 20  # only the steps after the checkpoint ran
    assert [step for step, _ in logged(tmp_path)] == [10, 20, 30, 40, 50, 60, 70, 80]  # one log, continued
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [step_dir_name(60), step_dir_name(80)]  # keep 2


def test_the_tasks_extra_state_is_checkpointed_and_restored_on_resume(shapes, tmp_path):
    first = fit(MeanColourTask(shapes["pool"], shapes["test"]), engine_cfg(10), str(tmp_path))
    saved = tmp_path / "checkpoints" / step_dir_name(10)
    ema = load_file(str(saved / TASK_STATE))
    weights = load_file(str(saved / "model.safetensors"))
    assert sorted(ema) == sorted(f"ema.{k}" for k in weights)
    assert not torch.equal(ema["ema.0.weight"], weights["0.weight"])  # an average, not a copy of the weights

    task = MeanColourTask(shapes["pool"], shapes["test"])
    resumed = fit(task, engine_cfg(10), str(tmp_path))  # nothing left to train: resume, evaluate, export
    assert resumed["resumed_from"] == [10] and task.updates == 0
    exported = load_file(str(tmp_path / "mean_colour.safetensors"))
    assert all(torch.equal(exported[k], ema[f"ema.{k}"]) for k in exported)  # the restored EMA, not a fresh one
    assert resumed["eval"] == first["eval"]  # evaluation uses the restored EMA too


def test_gradient_accumulation_matches_one_batch_of_the_same_size(shapes, tmp_path):
    whole = fit(MeanColourTask(shapes["pool"], shapes["test"], batch_size=16), engine_cfg(10), str(tmp_path / "a"))
    halves = fit(MeanColourTask(shapes["pool"], shapes["test"], batch_size=8),
                 engine_cfg(10, optim={"accum_steps": 2}), str(tmp_path / "b"))
    assert whole["samples_seen"] == halves["samples_seen"] == 160
    # two halves of each batch, in the same order: the same mean gradient up to float rounding
    assert halves["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-4)
    a, b = (load_file(str(tmp_path / run / "checkpoints" / step_dir_name(10) / "model.safetensors")) for run in "ab")
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-4, atol=1e-6)
