"""The multi-scale flow (RealNVP, Glow): at each level squeeze, take K steps of flow, and factor out half the
channels; the last level's output goes to the base distribution.

    level l:  squeeze -> K x step -> split (all but the last level)
    step:     nice     reverse + additive coupling
              realnvp  reverse + affine coupling (tanh-bounded scale)
              glow     actnorm + invertible 1x1 conv + affine coupling (sigmoid scale)

Each factored-out half z is standardised by a learned Gaussian conditioned on the half that goes on (and on the
conditioning vector): eps = (z - mu(h, c)) exp(-log_sigma(h, c)), Glow's split prior written as one more invertible
layer. The top is standardised the same way by a learned per-dimension Gaussian shifted by c: the conditional base
distribution, and NICE's diagonal scaling S. So the whole model is one bijection x -> eps with a standard normal
base, and

    log p(x) = log N(eps; 0, I) + sum of every layer's log|det|

Sampling is the exact inverse of a standard normal draw times a temperature.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.generative.flows.conditioning import Conditioner
from training.generative.flows.config import FlowModelConfig
from training.generative.flows.coupling import AdditiveCoupling, AffineCoupling
from training.generative.flows.layers import ActNorm, InvConv1x1, Reverse, Squeeze
from training.generative.seeds import image_generators, randn_rows


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """log N(eps; 0, I) per sample (B,) of eps (B, D)."""
    return -0.5 * (eps**2).sum(1) - 0.5 * eps.shape[1] * math.log(2 * math.pi)


class Split(nn.Module):
    """x (B, C, H, W) -> (h = x[:, :C/2], eps = (z - mu) exp(-log_sigma)) with z = x[:, C/2:] and (mu, log_sigma)
    from a zero-initialised conv of h plus a per-channel shift by c. log|det| = -sum log_sigma."""

    def __init__(self, channels: int, cond_dim: int = 0):
        super().__init__()
        self.half = channels // 2
        self.net = nn.Conv2d(self.half, 2 * (channels - self.half), 3, padding=1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)
        self.cond = nn.Linear(cond_dim, 2 * (channels - self.half)) if cond_dim else None
        if self.cond is not None:
            nn.init.zeros_(self.cond.weight)
            nn.init.zeros_(self.cond.bias)

    def gaussian(self, h: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(h)
        if self.cond is not None:
            out = out + self.cond(c)[:, :, None, None]
        return out[:, 0::2], out[:, 1::2]  # mu, log_sigma

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        h, z = x[:, :self.half], x[:, self.half:]
        mu, log_sigma = self.gaussian(h, c)
        return h, (z - mu) * torch.exp(-log_sigma), -log_sigma.flatten(1).sum(1)

    def inverse(self, h: torch.Tensor, eps: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        mu, log_sigma = self.gaussian(h, c)
        return torch.cat([h, eps * torch.exp(log_sigma) + mu], 1)


class Prior(nn.Module):
    """The top of the flow z (B, C, H, W) -> eps = (z - mu(c)) exp(-log_sigma(c)): a learned per-dimension mean and
    log-scale, shifted per channel by the conditioning vector. log|det| = -sum log_sigma."""

    def __init__(self, shape: tuple[int, int, int], cond_dim: int = 0):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1, *shape))
        self.log_sigma = nn.Parameter(torch.zeros(1, *shape))
        self.cond = nn.Linear(cond_dim, 2 * shape[0]) if cond_dim else None
        if self.cond is not None:
            nn.init.zeros_(self.cond.weight)
            nn.init.zeros_(self.cond.bias)

    def gaussian(self, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cond is None:
            return self.mu, self.log_sigma
        shift = self.cond(c)[:, :, None, None]
        return self.mu + shift[:, 0::2], self.log_sigma + shift[:, 1::2]

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.gaussian(c)
        log_det = -log_sigma.flatten(1).sum(1).expand(z.shape[0])
        return (z - mu) * torch.exp(-log_sigma), log_det

    def inverse(self, eps: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        mu, log_sigma = self.gaussian(c)
        return eps * torch.exp(log_sigma) + mu


def flow_step(cfg: FlowModelConfig, channels: int, cond_dim: int) -> list[nn.Module]:
    if cfg.kind == "nice":
        return [Reverse(), AdditiveCoupling(channels, cfg.hidden, cond_dim)]
    coupling = AffineCoupling(channels, cfg.hidden, cond_dim, cfg.scale_kind())
    if cfg.kind == "realnvp":
        return [Reverse(), coupling]
    return [ActNorm(channels), InvConv1x1(channels), coupling]


class FlowModel(nn.Module):
    """x (B, C, H, W) in the model's input space [+ conditioning ids] <-> eps (B, C*H*W); `forward` is log p(x)."""

    def __init__(self, cfg: FlowModelConfig, channels: int = 3, resolution: int = 16):
        super().__init__()
        self.cfg, self.shape = cfg, (channels, resolution, resolution)
        self.conditioner = Conditioner(cfg) if cfg.conditioning != "none" else None
        cond_dim = cfg.cond_dim if self.conditioner is not None else 0
        self.levels, self.splits = nn.ModuleList(), nn.ModuleList()
        self.eps_shapes: list[tuple[int, int, int]] = []  # what each split (then the top) hands the base
        c, r = channels, resolution
        for level in range(cfg.levels):
            c, r = c * 4, r // 2
            steps = [layer for _ in range(cfg.steps_per_level) for layer in flow_step(cfg, c, cond_dim)]
            self.levels.append(nn.ModuleList([Squeeze(), *steps]))
            if level < cfg.levels - 1:
                self.splits.append(Split(c, cond_dim))
                self.eps_shapes.append((c - c // 2, r, r))
                c = c // 2
        self.prior = Prior((c, r, r), cond_dim)
        self.eps_shapes.append((c, r, r))

    def embed(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        if self.conditioner is None:
            return None
        if ids is None:
            raise ValueError("this flow is conditional: pass the conditioning ids")
        return self.conditioner(ids)

    def encode(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (eps (B, D), log|det d eps / dx| (B,))."""
        c = self.embed(ids)
        log_det = x.new_zeros(x.shape[0])
        parts = []
        h = x
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h, c)
                log_det = log_det + ld
            if i < len(self.splits):
                h, eps, ld = self.splits[i](h, c)
                parts.append(eps.flatten(1))
                log_det = log_det + ld
        eps, ld = self.prior(h, c)
        parts.append(eps.flatten(1))
        return torch.cat(parts, 1), log_det + ld

    def decode(self, eps: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """eps (B, D) -> x: the exact inverse of `encode`."""
        c = self.embed(ids)
        sizes = [math.prod(s) for s in self.eps_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(eps.split(sizes, 1), self.eps_shapes, strict=True)]
        h = self.prior.inverse(parts[-1], c)
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, parts[i], c)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h, c)
        return h

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per sample (B,), x in the model's input space (preprocessing not counted here)."""
        eps, log_det = self.encode(x, ids)
        return standard_normal_log_prob(eps) + log_det

    @torch.no_grad()
    def sample(self, seeds: list[int], ids: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """One image per seed: image i's standard normal draw from its own CPU generator (`seeds[i]`), times
        `temperature`, through the exact inverse; the same seed is the same image in any batch."""
        device = next(self.parameters()).device
        eps = randn_rows((math.prod(self.shape),), image_generators(seeds), device=device)  # (B, D)
        return self.decode(eps.to(next(self.parameters()).dtype) * temperature, ids)

    # --- Glow's data-dependent actnorm initialisation ---------------------------------------------------------------
    def actnorms(self) -> list[ActNorm]:
        return [m for m in self.modules() if isinstance(m, ActNorm)]

    @property
    def initialised(self) -> bool:
        return all(a.ready for a in self.actnorms())

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Initialise every actnorm from one batch, in order (each sees its input as the layers below produce it).
        Raises if any is initialised already: a model that came from a checkpoint keeps the checkpoint's values."""
        if any(a.ready for a in self.actnorms()):
            raise RuntimeError("this flow's actnorm is already initialised")
        for a in self.actnorms():
            a.init_from_next_batch = True
        try:
            self.encode(x, ids)
        finally:
            for a in self.actnorms():
                a.init_from_next_batch = False
