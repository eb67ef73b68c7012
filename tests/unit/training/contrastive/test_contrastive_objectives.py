"""Each objective trains a tiny model for a few dozen steps on the shapes shards and its loss falls.

The runs are in-process (`scaling.num_workers: 0`: no Ray), one thread, batch 32.
"""

from __future__ import annotations

import csv
import os

import pytest

from training.contrastive.config import TrainConfig
from training.contrastive.task import ContrastiveTask
from training.engine import fit

# (objective, model, extra config, required fall: last logged loss <= fall x first logged loss)
RUNS = {
    "clip": ("tiny-clip-vit", {"optim": {"accum_steps": 2}, "model": {"grad_checkpointing": True}}, 0.7),
    "siglip": ("tiny-sigmoid-vit", {}, 0.6),
    "coca": ("tiny-coca", {"data": {"batch_size": 16}}, 0.6),  # its 49408-way caption head is the slow part
    "catlip": ("tiny-clip-vit", {"model": {"precision": "bf16"}}, 0.7),  # bf16 autocast runs on CPU too
}


def tiny_run(objective: str, model: str, extra: dict, steps: int = 30, **top) -> TrainConfig:
    data = {"objective": objective, "model": {"name": model, **extra.get("model", {})}, "steps": steps,
            "log_every": 5, "checkpoint_every": steps, "optim": {"lr": 2e-3, "warmup_steps": 5,
                                                                 **extra.get("optim", {})},
            "data": {"batch_size": 32, "loader_workers": 0, "shuffle_buffer": 256, **extra.get("data", {})},
            "scaling": {"num_workers": 0, "torch_threads": 1}, **top}
    return TrainConfig.model_validate(data)


def train_contrastive(cfg: TrainConfig, shards: list[str], out_dir: str) -> dict:
    """What the train-clip stage calls: the contrastive task on the engine, whose config is the task's."""
    return fit(ContrastiveTask(cfg, shards), cfg, out_dir)


def logged(out_dir: str, key: str = "loss") -> list[float]:
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.parametrize("objective", list(RUNS))
def test_the_loss_falls(objective, shapes, tmp_path):
    model, extra, fall = RUNS[objective]
    result = train_contrastive(tiny_run(objective, model, extra), shapes["pool"], str(tmp_path))
    losses = logged(str(tmp_path))
    assert result["step"] == 30 and len(losses) == 6
    assert losses[-1] <= fall * losses[0], f"{objective}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    assert os.path.isfile(tmp_path / "model.pt") and os.path.isfile(tmp_path / "curves.png")
    if objective == "catlip":
        assert result["vocab_size"] >= 7  # 4 colours + 3 shapes + the caption templates' content words
