"""The task defined outside `training/` (`tests/training_mean_colour.py`) on Ray Train with two gloo workers: both
ranks take every step, the run matches one process training on the same global batches, and a rerun resumes from
the checkpoint the workers wrote together."""

from __future__ import annotations

import csv
import json
import os

import pytest
import training_mean_colour
from training_mean_colour import MeanColourTask

from training.engine import fit
from training.engine.checkpoint import step_dir_name
from training.engine.config import EngineConfig

STEPS, GLOBAL_BATCH = 40, 16


def engine_cfg(steps: int, workers: int) -> EngineConfig:
    return EngineConfig.model_validate({
        "steps": steps, "log_every": 10, "checkpoint_every": 20, "optim": {"lr": 0.03, "warmup_steps": 5},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1, "torch_threads": 1, "max_failures": 0}})


def losses(out_dir: str) -> list[float]:
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def test_a_new_task_on_two_gloo_workers_trains_like_one_process_and_resumes(ray_local, shapes, tmp_path):
    ray_local.cloudpickle.register_pickle_by_value(training_mean_colour)  # tests/ is not a package workers import
    two = str(tmp_path / "two")
    result = fit(MeanColourTask(shapes["pool"], shapes["test"], batch_size=GLOBAL_BATCH // 2), engine_cfg(STEPS, 2),
                 two)
    one = str(tmp_path / "one")
    alone = fit(MeanColourTask(shapes["pool"], shapes["test"], batch_size=GLOBAL_BATCH), engine_cfg(STEPS, 0), one)

    assert result["step"] == alone["step"] == STEPS
    assert result["samples_seen"] == alone["samples_seen"] == STEPS * GLOBAL_BATCH
    final = tmp_path / "two" / "checkpoints" / step_dir_name(STEPS)
    with open(final / "state.json") as f:
        assert json.load(f)["world"] == 2
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors"} <= set(os.listdir(final))  # both ranks reached it
    two_losses, one_losses = losses(two), losses(one)
    assert two_losses[-1] <= 0.02 * two_losses[0], two_losses  # measured: 0.18 -> 0.0023
    # Rank r takes every other sample of the one shuffled order, so the ranks' half batches together are the single
    # process's batch, and DDP's averaged gradient is its gradient: the same losses and weights, up to rounding.
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    assert result["eval"]["colour"]["mse"] == pytest.approx(alone["eval"]["colour"]["mse"], rel=1e-3)

    more = fit(MeanColourTask(shapes["pool"], shapes["test"], batch_size=GLOBAL_BATCH // 2), engine_cfg(STEPS + 20, 2),
               two)
    assert more["step"] == STEPS + 20 and more["resumed_from"] == [STEPS]
    assert more["samples_seen"] == (STEPS + 20) * GLOBAL_BATCH
    assert len(losses(two)) == (STEPS + 20) // 10  # the resumed run continued the log
