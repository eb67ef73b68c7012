"""One noise-level algebra for every diffusion family: x_t = a(t) x0 + b(t) eps, and sigma = b / a.

Each family below is a forward process written as its two coefficients (EDM, Karras et al. 2022, Table 1). Dividing
by a(t) gives the one "sigma space" every family shares, x_hat = x_t / a = x0 + sigma eps, so a model trained in any
family is a denoiser D(x_hat; sigma) ~ E[x0 | x_hat] and any sigma-space sampler can sample it.

    flow   rectified flow (minRF, SD3): a = 1 - t, b = t, t in [0, 1], t = 1 is pure noise;  sigma = t / (1 - t)
    vp     variance preserving (DDPM / DDIM, EDM's VP): a = 1 / sqrt(1 + sigma^2), b = sigma a,
           sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t in [1e-5, 1]
    ve     variance exploding (score matching, NCSN): a = 1, b = sigma = sqrt(t), t in [sigma_min^2, sigma_max^2]
    edm    EDM: a = 1, b = sigma = t, t in [sigma_min, sigma_max]

`flow_time(sigma) = sigma / (1 + sigma)` is rectified flow's t of a noise level: the common coordinate of the time
samplers (logit-normal, mode, cosmap are densities over it) and of the network's noise input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FAMILIES = ("flow", "vp", "ve", "edm")


def flow_time(sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow's t of a noise level: t = sigma / (1 + sigma) (t = 1 at sigma = inf)."""
    return sigma / (1 + sigma)


def sigma_of_flow_time(t: torch.Tensor) -> torch.Tensor:
    return t / (1 - t)


@dataclass(frozen=True)
class Family:
    """A forward process: its name, its time range, and sigma(t) / t(sigma); a(sigma) follows from the name."""

    name: str
    t_min: float
    t_max: float
    sigma_min: float  # the noise levels a sampler runs between (sigma_max: where sampling starts)
    sigma_max: float
    vp_beta_d: float = 19.9
    vp_beta_min: float = 0.1

    # --- sigma <-> t ----------------------------------------------------------------------------------------
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        if self.name == "flow":
            return t / (1 - t)
        if self.name == "vp":
            return torch.sqrt(torch.expm1(0.5 * self.vp_beta_d * t**2 + self.vp_beta_min * t))
        if self.name == "ve":
            return torch.sqrt(t)
        return t  # edm

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.name == "flow":
            return sigma / (1 + sigma)
        if self.name == "vp":
            b, d = self.vp_beta_min, self.vp_beta_d
            return (torch.sqrt(b**2 + 2 * d * torch.log1p(sigma**2)) - b) / d
        if self.name == "ve":
            return sigma**2
        return sigma

    # --- the process ----------------------------------------------------------------------------------------
    def scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """a: x_t = a (x0 + sigma eps). Flow: 1 - t = 1 / (1 + sigma); VP: 1 / sqrt(1 + sigma^2); VE, EDM: 1."""
        if self.name == "flow":
            return 1 / (1 + sigma)
        if self.name == "vp":
            return torch.rsqrt(1 + sigma**2)
        return torch.ones_like(sigma)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a(t), b(t)) of x_t = a x0 + b eps."""
        sigma = self.sigma(t)
        a = self.scale(sigma)
        if self.name == "flow":  # exact at t = 1, where sigma is infinite
            return 1 - t, t
        return a, a * sigma

    def diffuse(self, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t for per-sample noise levels sigma (B,)."""
        a = self.scale(sigma).view(-1, *[1] * (x0.ndim - 1))
        return a * (x0 + sigma.view_as(a) * eps)

    # --- the network's noise input (EDM's c_noise) ------------------------------------------------------------
    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's c_noise: VP (M - 1) t with M = 1000 steps, VE ln(sigma / 2), EDM ln(sigma) / 4; flow 1000 t
        (minRF and SD3 feed t scaled to the 0..1000 range of a DDPM timestep embedding)."""
        if self.name == "flow":
            return 1000 * flow_time(sigma)
        if self.name == "vp":
            return 999 * self.t(sigma)
        if self.name == "ve":
            return torch.log(0.5 * sigma)
        return 0.25 * torch.log(sigma)

    def _c_noise_range(self) -> tuple[float, float]:
        # constants from 0-d CPU tensors: the device-strict tests' fake tensors propagate those (not a pair)
        return tuple(float(self.c_noise(torch.tensor(s, dtype=torch.float64))) for s in (self.sigma_min,
                                                                                          self.sigma_max))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """c_noise mapped affinely onto 0..1000, the range a sinusoidal timestep embedding (SD3's) resolves."""
        lo, hi = self._c_noise_range()
        return 1000 * (self.c_noise(sigma) - lo) / (hi - lo)

    def sigma_of_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """The inverse of `timestep` (for analytic networks in tests, and for reading a network's input back)."""
        lo, hi = self._c_noise_range()
        c = lo + timestep / 1000 * (hi - lo)
        if self.name == "flow":
            return sigma_of_flow_time(c / 1000)
        if self.name == "vp":
            return self.sigma(c / 999)
        if self.name == "ve":
            return 2 * torch.exp(c)
        return torch.exp(4 * c)


def make_family(name: str, sigma_min: float | None = None, sigma_max: float | None = None) -> Family:
    """A family with its usual ranges (EDM's Table 1; flow runs to t = 1 - 1e-5)."""
    if name == "flow":
        fam = Family("flow", 0.0, 1.0, 0.002, 200.0)
    elif name == "vp":  # sigma(1e-5) ~ 0.001, sigma(1) ~ 152: EDM's VP range
        vp = Family("vp", 1e-5, 1.0, 1.0, 2.0)
        ends = [float(vp.sigma(torch.tensor(t, dtype=torch.float64))) for t in (1e-5, 1.0)]  # 0-d: as above
        fam = Family("vp", 1e-5, 1.0, *ends)
    elif name == "ve":
        fam = Family("ve", 0.02**2, 100.0**2, 0.02, 100.0)
    elif name == "edm":
        fam = Family("edm", 0.002, 80.0, 0.002, 80.0)
    else:
        raise ValueError(f"unknown diffusion family {name!r}; known: {', '.join(FAMILIES)}")
    if sigma_min is not None or sigma_max is not None:
        fam = Family(fam.name, fam.t_min, fam.t_max, sigma_min or fam.sigma_min, sigma_max or fam.sigma_max)
    if not 0 < fam.sigma_min < fam.sigma_max < math.inf:
        raise ValueError(f"{name}: need 0 < sigma_min < sigma_max, got {fam.sigma_min}, {fam.sigma_max}")
    return fam
