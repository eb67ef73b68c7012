"""Exact log-likelihoods in bits per dimension, the one number that means the same thing for every generator.

Diffusion and flow-matching models: the probability-flow ODE in sigma space, dx/dsigma = f(x, sigma) =
(x - D(x; sigma)) / sigma, carries a sample from sigma_min up to sigma_max, and the instantaneous change of variables
(Chen et al. 2018; Song et al. 2021) gives

    log p_min(x) = log N(x(sigma_max); 0, (sigma_max^2 + sigma_data^2) I) + int_{sigma_min}^{sigma_max} div f dsigma

The divergence is exact (one backward pass per dimension: small inputs) or Hutchinson's estimate E_v[v^T (df/dx) v]
with Rademacher probes, averaged over `probes`; each held-out sample's probes are drawn from (seed, its index in the
set), so no two samples share them and the standard error counts independent draws. The ODE is solved by torchdiffeq's
adaptive Dormand-Prince (dopri5) at the stated rtol / atol.

Every preprocessing step's log-determinant is counted, so all families report bits/dim of the same 8-bit data:
pixels k in {0..255} are dequantised to k + u, u ~ U(0, 1) (a density on [0, 256)^D whose likelihood lower-bounds
the discrete one), then scaled to [-1, 1] (log-det D log(2 / 256)) or pushed through a logit (flows; its own
log-det). bits/dim = -(log p(x) + log|det| of the preprocessing) / (D ln 2).

`heldout_bits_per_dim` is the one function every generator's evaluation calls: it dequantises held-out pixels with a
fixed seed, preprocesses them, asks the family for log p of its own input (a flow's exact change of variables, a
denoiser's `OdeLikelihood`), refuses a non-finite sample by name and returns bits/dim of the same 8-bit data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from pipeline.core.ids import derived_seed
from training.generative.config import LikelihoodConfig  # noqa: F401  (its config, importable here)


class NonFiniteLikelihood(ValueError):
    """A sample whose log-likelihood is NaN or infinite: named, never averaged away."""


def check_finite(log_p: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    bad = (~torch.isfinite(log_p)).nonzero().flatten().tolist()
    if bad:
        who = [names[i] if names else f"#{i}" for i in bad[:5]]
        raise NonFiniteLikelihood(f"{len(bad)} sample(s) have a non-finite log-likelihood: {', '.join(who)} "
                                  f"(values {[float(log_p[i]) for i in bad[:5]]})")
    return log_p


def gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; 0, std^2 I) per sample (B,)."""
    d = x[0].numel()
    return -0.5 * (x.flatten(1) ** 2).sum(1) / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def divergence(f: Callable, x: torch.Tensor, probes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), div f(x)) per sample: exact when `probes` is None, else Hutchinson's mean over probes (P, B, ...)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        if probes is None:
            flat = out.flatten(1)
            div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + grad.flatten(1)[:, i]
        else:
            div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
            for p, v in enumerate(probes):
                (vjp,) = torch.autograd.grad(out, x, v, retain_graph=p < len(probes) - 1)
                div = div + (vjp * v).flatten(1).sum(1)
            div = div / len(probes)
    return out.detach(), div.detach()


@dataclass
class OdeLikelihood:
    """log p(x) at sigma_min of a denoiser's probability-flow ODE (no preprocessing counted here)."""

    denoise: Callable  # D(x_hat, sigma (B,)) -> x0 estimate
    sigma_max: float
    sigma_data: float = 0.5
    cfg: LikelihoodConfig = field(default_factory=LikelihoodConfig)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per sample (B,); `index` (B,) says which sample of the whole set each row is (its Hutchinson
        probes come from (seed, index), so no two samples of the set share them); default 0..B-1."""
        from torchdiffeq import odeint

        probes = None
        if self.cfg.trace == "hutchinson":  # fixed for the whole solve, as the estimator requires
            rows = range(x.shape[0]) if index is None else index.tolist()
            probes = hutchinson_probes(self.cfg.seed, rows, self.cfg.probes, x.shape[1:]).to(x)  # (P, B, ...)

        def field(sigma: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
            y = state[0]
            s = sigma.to(y.dtype).expand(y.shape[0])
            dy, div = divergence(lambda z: (z - self.denoise(z, s)) / s.view(-1, *[1] * (z.ndim - 1)), y, probes)
            return dy, -div  # d(log p)/dsigma = -div f; integrating -div keeps the bookkeeping in one place

        # the time grid and the running log-density live on x's device: torchdiffeq joins them with x
        grid = torch.tensor([self.cfg.sigma_min, self.sigma_max], dtype=x.dtype, device=x.device)
        start = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        ys, neg_int = odeint(field, (x, start), grid, rtol=self.cfg.rtol, atol=self.cfg.atol, method="dopri5")
        prior = gaussian_log_prob(ys[-1], math.sqrt(self.sigma_max**2 + self.sigma_data**2))
        # log p_min(x) = log p_max(x(sigma_max)) + int div f dsigma = prior - neg_int
        return prior - neg_int[-1]


def hutchinson_probes(seed: int, rows, probes: int, shape) -> torch.Tensor:
    """Rademacher probes (P, B, *shape) on the CPU: row b's from a generator seeded by (seed, rows[b]), so a
    sample's probes depend on which sample it is, never on its batch or its place in one."""
    draws = [torch.randint(0, 2, (probes, *shape), generator=torch.Generator().manual_seed(derived_seed(seed, r)))
             for r in rows]
    return (torch.stack(draws, 1) * 2 - 1).float()


def dequantize(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 pixels (B, C, H, W) -> k + u in [0, 256), u ~ U(0, 1)."""
    return pixels.double() + torch.rand(pixels.shape, generator=generator, dtype=torch.float64)


def to_signed_unit(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[0, 256) -> [-1, 1): x = 2 y / 256 - 1; returns (x, log|det dx/dy| per sample = D log(2 / 256))."""
    d = y[0].numel()
    return 2 * y / 256 - 1, torch.full((y.shape[0],), d * math.log(2 / 256), dtype=y.dtype, device=y.device)


def bits_per_dim(log_p: torch.Tensor, log_det: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-sample bits/dim of the dequantised 8-bit data from the model's log-density of its own input and the
    preprocessing's log-determinant (data -> model input)."""
    return -(log_p + log_det) / (dims * math.log(2))


def to_logit(y: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """[0, 256) -> logit(p), p = alpha + (1 - 2 alpha) y / 256 (RealNVP's, keeping p off 0 and 1); returns (x,
    log|det dx/dy| per sample = sum log((1 - 2 alpha) / 256) - log p - log(1 - p))."""
    p = alpha + (1 - 2 * alpha) * y / 256
    log_p, log_q = torch.log(p), torch.log1p(-p)
    log_det = (math.log((1 - 2 * alpha) / 256) - log_p - log_q).flatten(1).sum(1)
    return log_p - log_q, log_det


@dataclass(frozen=True)
class Preprocess:
    """Dequantised pixels [0, 256) <-> a model's input space, with the log-determinant bits/dim counts."""

    name: Literal["signed_unit", "logit"] = "signed_unit"
    alpha: float = 0.05  # logit only

    def __call__(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_signed_unit(y) if self.name == "signed_unit" else to_logit(y, self.alpha)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> uint8 pixels: the inverse map, then the bin k that k + u fell in."""
        if self.name == "signed_unit":
            y = (x + 1) * 128
        else:
            y = (torch.sigmoid(x) - self.alpha) * 256 / (1 - 2 * self.alpha)
        return y.floor().clamp(0, 255).to(torch.uint8)


@dataclass
class BitsPerDim:
    """Per-sample bits/dim of held-out 8-bit images, and how they were measured."""

    per_sample: torch.Tensor  # (N,) float64
    preprocess: str
    seed: int

    def as_dict(self) -> dict:
        n = len(self.per_sample)
        sem = float(self.per_sample.std() / math.sqrt(n)) if n > 1 else 0.0
        return {"bits_per_dim": float(self.per_sample.mean()), "bits_per_dim_sem": sem, "samples": n,
                "preprocess": self.preprocess, "dequantisation": "uniform", "seed": self.seed}


LogDensity = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x, conditioning or None) -> (B,)


@torch.no_grad()
def heldout_bits_per_dim(log_density: LogDensity, pixels: torch.Tensor, names: list[str],
                         cond: torch.Tensor | None = None, *, preprocess: Preprocess = Preprocess(), seed: int = 0,
                         batch_size: int = 128, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> BitsPerDim:
    """Bits/dim of uint8 `pixels` (N, C, H, W) under a model whose `log_density(x, cond)` is log p of its input
    space. Dequantisation noise is drawn from `seed` (the same numbers for every model); a NaN or infinite
    per-sample likelihood raises `NonFiniteLikelihood` naming the sample, never enters a mean."""
    gen = torch.Generator().manual_seed(seed)
    dims = pixels[0].numel()
    out = []
    for i in range(0, len(pixels), batch_size):
        x, log_det = preprocess(dequantize(pixels[i:i + batch_size], gen))  # float64 on CPU
        c = None if cond is None else cond[i:i + batch_size].to(device)
        log_p = log_density(x.to(device, dtype), c).double().cpu()
        check_finite(log_p, names[i:i + batch_size])
        out.append(bits_per_dim(log_p, log_det, dims))
    return BitsPerDim(torch.cat(out), preprocess.name, seed)
