"""An exponential moving average of a module's weights, with EDM's half-life in samples and ramp-up.

    halflife = min(halflife_samples, rampup * samples_seen)      beta = 0.5 ** (batch / halflife)

A half-life counted in samples means the same averaging whatever the batch size; the ramp-up keeps the average of a
short run from remembering its random initialisation (EDM, Karras et al. 2022, training/training_loop.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of `module` that `update` pulls towards the live weights; evaluation and export use it."""

    def __init__(self, module: nn.Module, halflife_samples: float, rampup: float | None = None):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.halflife, self.rampup = halflife_samples, rampup

    def beta(self, batch: int, samples_seen: int) -> float:
        halflife = self.halflife if self.rampup is None else min(self.halflife, self.rampup * samples_seen)
        return 0.5 ** (batch / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, live: nn.Module, batch: int, samples_seen: int) -> None:
        beta = self.beta(batch, samples_seen)
        for ema, p in zip(self.module.parameters(), live.parameters(), strict=True):
            ema.lerp_(p.detach().to(ema.dtype), 1 - beta)
        for ema, b in zip(self.module.buffers(), live.buffers(), strict=True):
            ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(tensors)
