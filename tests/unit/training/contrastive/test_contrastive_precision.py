"""The contrastive task's half-precision path, one engine step on the CPU for each objective: the loss under bf16
autocast (and fp16 with the engine's loss scaling), finite, past the non-finite guard, and the update changed the
weights, so the GPU's precision settings are not first run on a GPU (`training_precision`)."""

from __future__ import annotations

import pytest
from test_contrastive_objectives import RUNS, tiny_run
from training_precision import half_on_cpu, one_step, recording, steps_for  # noqa: F401  (half_on_cpu: a fixture)

from training.contrastive.task import ContrastiveTask


@pytest.mark.parametrize(("objective", "precision"), [("clip", "bf16"), ("siglip", "bf16"), ("coca", "bf16"),
                                                      ("catlip", "bf16"), ("clip", "fp16"), ("siglip", "fp16")])
def test_a_contrastive_step_under_half_precision_autocast(objective, precision, shapes, tmp_path, half_on_cpu):  # noqa: F811
    model, extra, _ = RUNS[objective]
    cfg = tiny_run(objective, model, {**extra, "data": {"batch_size": 8}}, steps=steps_for(precision),
                   log_every=1)
    task = recording(ContrastiveTask)(cfg, shapes["pool"])
    one_step(task, cfg, str(tmp_path), precision)
