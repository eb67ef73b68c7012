"""What the half-precision tests share: one engine step of a task under CPU autocast, and what it must show.

`one_step(task, cfg, out_dir, precision)` trains `recording(TaskClass)(...)` for one step with bf16 or fp16 autocast
on the CPU (the `half_on_cpu` fixture lets fp16, and with it the engine's GradScaler, run on the CPU, which
`precision: fp16` refuses for users) and checks the loss ran under that autocast, was finite, passed the
non-finite guard and that the update changed the weights.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from training.engine import fit
from training.engine import loop as engine_loop
from training.engine.checkpoint import step_dir_name

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def recording(cls):
    """The task, recording its initial weights, the autocast state its loss ran under and its loss's dtype."""

    class Recording(cls):
        def setup(self, rank, world, device):
            self.module = super().setup(rank, world, device)
            self.initial = {k: v.detach().clone() for k, v in self.module.named_parameters() if v.requires_grad}
            return self.module

        def loss(self, model, batch):
            self.autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
            parts = super().loss(model, batch)
            self.loss_dtype = parts["loss"].dtype
            return parts

    return Recording


@pytest.fixture
def half_on_cpu(monkeypatch):
    """fp16 autocast (and so the engine's GradScaler) on the CPU, which `precision: fp16` refuses for users."""
    original = engine_loop.autocast_dtype
    monkeypatch.setattr(engine_loop, "autocast_dtype", lambda precision, device: torch.float16
                        if precision == "fp16" else original(precision, device))


def steps_for(precision: str) -> int:
    """bf16: one step. fp16: three, as loss scaling starts at 2^16 and halves after a step whose scaled gradient
    overflowed (skipped by the scaler, not by the engine's guard): SigLIP's first step does."""
    return 3 if precision == "fp16" else 1


def one_step(task, cfg, out_dir, precision: str) -> dict:
    """Train `task` (a `recording` class) for `cfg.steps` under `precision` autocast; check what the module says."""
    task.precision = precision
    fit(task, cfg, out_dir)
    with open(f"{out_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    assert task.autocast == (True, HALF[precision])
    assert all(math.isfinite(float(r["loss"])) for r in rows) and int(rows[-1]["skipped_steps"]) == 0
    changed = [k for k, p in task.module.named_parameters()
               if k in task.initial and not torch.equal(p, task.initial[k])]
    assert len(changed) >= len(task.initial) // 2, f"{len(changed)} of {len(task.initial)} tensors changed"
    with open(f"{out_dir}/checkpoints/{step_dir_name(cfg.steps)}/state.json") as f:
        scaler = json.load(f)["scaler"]  # the engine's GradScaler, saved when it is enabled
    if precision == "fp16":
        assert 2.0**13 <= scaler["scale"] <= 2.0**16  # enabled, and at most a few back-offs from its start
    else:
        assert scaler is None
    return rows[-1]
