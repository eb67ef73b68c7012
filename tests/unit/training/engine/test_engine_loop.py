"""The engine's schedule and precision rules, as numbers."""

from __future__ import annotations

import math

import pytest
import torch

from training.engine.config import OptimConfig
from training.engine.loop import autocast_dtype, lr_at


def test_the_learning_rate_warms_up_linearly_then_falls_on_a_cosine_to_min_lr():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert [lr_at(s, cfg, 110) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)  # the peak, right after warmup
    assert lr_at(60, cfg, 110) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down the cosine
    assert lr_at(35, cfg, 110) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg, 110) == pytest.approx(1e-4) and lr_at(500, cfg, 110) == pytest.approx(1e-4)
    assert lr_at(0, OptimConfig(lr=1e-3, warmup_steps=0), 10) == pytest.approx(1e-3)


def test_precision_picks_the_autocast_dtype_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
