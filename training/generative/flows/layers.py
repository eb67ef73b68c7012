"""The invertible layers that are not couplings: Glow's actnorm and LU-decomposed 1x1 convolution, and the fixed
permutations (channel reversal, squeeze).

Every layer here and in `coupling.py` / `multiscale.py` has one contract, the change of variables written once:

    forward(x, c) -> (y, log|det dy/dx| per sample (B,))      inverse(y, c) -> x

`c` is the conditioning vector (B, cond_dim) or None; layers that do not use it ignore it. Log-determinants are
per sample, so a model's log-density is the base density of its output plus the sum of its layers' terms.
"""

from __future__ import annotations

import torch
from torch import nn


class NotInitialised(RuntimeError):
    """An actnorm used before its data-dependent initialisation."""


def _sync_ready(module: ActNorm, incompatible_keys) -> None:
    """After load_state_dict: the Python flag follows the loaded buffer (a plain function: hooks are pickled)."""
    module.ready = bool(module.initialised)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale), initialised once from data so that y has zero mean and
    unit variance per channel (Glow, Kingma & Dhariwal 2018). The `initialised` buffer is part of the state dict:
    a model loaded from a checkpoint keeps the checkpoint's values and is never initialised again."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        # a float flag (not bool): gloo broadcasts DDP buffers and safetensors stores it like any tensor
        self.register_buffer("initialised", torch.zeros(()))
        self.ready = False  # a Python copy of the flag: checking the buffer would sync a GPU on every forward
        self.init_from_next_batch = False  # set by FlowModel.initialize
        self.register_load_state_dict_post_hook(_sync_ready)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        if self.ready:
            raise RuntimeError("actnorm is already initialised (a resumed run keeps its checkpoint's values)")
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialised.fill_(1.0)
        self.ready = True

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.ready:
            if not self.init_from_next_batch:
                raise NotInitialised("actnorm used before its data-dependent initialisation: FlowModel.initialize"
                                     "(batch) runs once before training (FlowTask.setup does it)")
            self.initialize(x)
        log_det = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.loc) * torch.exp(self.log_scale), log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution with W = P L (U + diag(sign * exp(log_s))): P a fixed permutation, L unit
    lower triangular, U strictly upper triangular, so log|det W| = sum(log_s) costs O(C) instead of O(C^3).
    Initialised from a random rotation (log|det| = 0)."""

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("strict_lower", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(len(self.log_s), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.strict_lower + eye
        upper = self.upper * self.strict_lower.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper  # (C_out, C_in)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        log_det = self.log_s.sum() * x.shape[2] * x.shape[3]
        return nn.functional.conv2d(x, w[:, :, None, None]), log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)  # float64: float32 inverses drift at C ~ 48
        return nn.functional.conv2d(y, w_inv[:, :, None, None])


class Reverse(nn.Module):
    """Reverse the channel order, so that the next coupling transforms the half this one passed through (NICE and
    RealNVP's alternating masks; Glow replaces it with the learned 1x1 convolution). log|det| = 0."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return y.flip(1)


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch becomes four channels (RealNVP's multi-scale step), so a
    coupling over channels also mixes space. A permutation: log|det| = 0."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, ch, h, w = x.shape
        y = x.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return y.reshape(b, ch * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, h, w = y.shape
        x = y.view(b, ch // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C/4, H, 2, W, 2)
        return x.reshape(b, ch // 4, h * 2, w * 2)
