"""Coupling layers: half the channels pass through unchanged and parameterise an invertible map of the other half,
so the Jacobian is triangular and its log-determinant is the sum of the log-scales (zero for an additive map).

    AdditiveCoupling  NICE (Dinh et al. 2014):   y_b = x_b + t(x_a)              log|det| = 0 exactly
    AffineCoupling    RealNVP / Glow:            y_b = (x_b + t(x_a)) * s(x_a)   log|det| = sum log s

The scale is bounded so that one step cannot blow up or collapse a channel: Glow's sigmoid(h + 2) (in (0, 1),
0.88 at a zero output) or a soft-clamped log-scale 2 tanh(h / 2) (RealNVP's tanh; s in (e^-2, e^2)). The
network's last convolution starts at zero, so every coupling starts as the identity (Glow's zero init). The
conditioning vector enters each network as a per-channel bias of its hidden layer.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ScaleKind = Literal["sigmoid", "tanh"]
TANH_BOUND = 2.0


class CouplingNet(nn.Module):
    """x_a (B, C_in, H, W) [+ c (B, cond_dim)] -> (B, C_out, H, W): conv3x3, conv1x1, zero-initialised conv3x3."""

    def __init__(self, c_in: int, c_out: int, hidden: int, cond_dim: int = 0):
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.mid = nn.Conv2d(hidden, hidden, 1)
        self.out = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.cond = nn.Linear(cond_dim, hidden) if cond_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = self.inp(x)
        if self.cond is not None:
            h = h + self.cond(c)[:, :, None, None]
        h = torch.relu(self.mid(torch.relu(h)))
        return self.out(h)


class AdditiveCoupling(nn.Module):
    def __init__(self, channels: int, hidden: int, cond_dim: int = 0):
        super().__init__()
        self.half = channels // 2
        self.net = CouplingNet(self.half, channels - self.half, hidden, cond_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, :self.half], x[:, self.half:]
        return torch.cat([xa, xb + self.net(xa, c)], 1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        ya, yb = y[:, :self.half], y[:, self.half:]
        return torch.cat([ya, yb - self.net(ya, c)], 1)


class AffineCoupling(nn.Module):
    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, scale: ScaleKind = "sigmoid"):
        super().__init__()
        self.half, self.scale = channels // 2, scale
        self.net = CouplingNet(self.half, 2 * (channels - self.half), hidden, cond_dim)

    def shift_log_scale(self, xa: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(xa, c)
        shift, raw = h[:, 0::2], h[:, 1::2]  # interleaved, as in Glow's code
        if self.scale == "sigmoid":
            return shift, nn.functional.logsigmoid(raw + 2.0)
        return shift, TANH_BOUND * torch.tanh(raw / TANH_BOUND)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, :self.half], x[:, self.half:]
        shift, log_s = self.shift_log_scale(xa, c)
        return torch.cat([xa, (xb + shift) * torch.exp(log_s)], 1), log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        ya, yb = y[:, :self.half], y[:, self.half:]
        shift, log_s = self.shift_log_scale(ya, c)
        return torch.cat([ya, yb * torch.exp(-log_s) - shift], 1)
