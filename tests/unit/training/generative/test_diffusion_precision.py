"""The diffusion task's half-precision path, one engine step on the CPU: the loss under bf16 autocast (and fp16 with
the engine's loss scaling), finite, past the non-finite guard, and the update changed the weights (see
`training_precision`). The flow task has no half-precision path (`FlowTask.precision` is fp32: a log-density sums
thousands of log-det terms), so it is not here."""

from __future__ import annotations

import pytest
import torch
from training_diffusion import tiny_config
from training_precision import half_on_cpu, one_step, recording, steps_for  # noqa: F401  (half_on_cpu: a fixture)

from training.generative.diffusion.task import DiffusionTask


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_diffusion_step_under_half_precision_autocast(precision, untrained, shapes, tmp_path, half_on_cpu):  # noqa: F811
    # without adaLN-Zero: its zero output layers leave every other weight without a gradient at the first step
    cfg = tiny_config(untrained, steps=steps_for(precision), log_every=1, data={"resolution": 8, "batch_size": 8},
                      sample={"seeds_per_prompt": 1}, model={"zero_init": False})
    task = recording(DiffusionTask)(cfg, shapes["pool"])
    one_step(task, cfg, str(tmp_path), precision)
    assert task.loss_dtype == torch.float32  # the loss is summed in fp32 whatever the network ran in
