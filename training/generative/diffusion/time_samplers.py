"""Training noise-level densities: which sigma each training sample gets.

    uniform       t ~ U(t_min, t_max) in the family's own time (rectified flow's classic, DDPM's uniform t)
    log_uniform   ln sigma ~ U(ln sigma_min, ln sigma_max) (NCSN / EDM's VE)
    log_normal    ln sigma ~ N(mean, std^2)  (EDM: P_mean = -1.2, P_std = 1.2)
    logit_normal  logit(t) ~ N(mean, std^2) in rectified flow's t (SD3: m = 0, s = 1)
    mode          SD3's mode sampling with heavy tails: t = 1 - u - s (cos^2(pi u / 2) - 1 + u)
    cosmap        SD3's cosmap: t = 1 - 1 / (tan(pi u / 2) + 1)

then the resolution shift sigma -> k sigma (SD3: t -> k t / (1 + (k - 1) t) in flow time; k = 3.0 was tuned for
1024 px, far too strong at 32 to 64 px, where k ~ 1 fits).

logit_normal and log_normal are one distribution: rectified flow's t = sigma / (1 + sigma), so logit(t) = ln sigma,
and a logit-normal t is a log-normal sigma with the same (mean, std). One class implements both; `mode` and
`cosmap` are densities over the same flow time. A logit-normal t almost never visits t < 0.1 or t > 0.9
(P = 1.4% each side at m = 0, s = 1): use mode or cosmap when the ends matter.
"""

from __future__ import annotations

import math

import torch

from training.generative.diffusion.config import TimeSamplerConfig  # noqa: F401  (its config, importable here)
from training.generative.diffusion.noise import Family, sigma_of_flow_time

TIME_SAMPLERS = ("uniform", "log_uniform", "log_normal", "logit_normal", "mode", "cosmap")


class TimeSampler:
    """Draws sigma (B,) for a family; `sigma(u)` maps uniforms (and normals) so tests can compare densities."""

    def __init__(self, cfg: TimeSamplerConfig, family: Family):
        self.cfg, self.family = cfg, family

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return self.sigma(u, z).float().to(device)

    def sigma(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The unshifted-then-shifted sigma of uniform draws u and normal draws z (float64)."""
        c, fam = self.cfg, self.family
        eps = 1e-5  # keeps flow time inside (0, 1): sigma finite and positive
        if c.kind == "uniform":
            sigma = fam.sigma(fam.t_min + (fam.t_max - fam.t_min) * u.clamp(eps, 1 - eps))
        elif c.kind == "log_uniform":
            lo, hi = math.log(fam.sigma_min), math.log(fam.sigma_max)
            sigma = torch.exp(lo + (hi - lo) * u)
        elif c.kind in ("log_normal", "logit_normal"):  # one distribution: ln sigma = logit(flow t)
            sigma = torch.exp(c.mean + c.std * z)
        elif c.kind == "mode":
            t = 1 - u - c.mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
            sigma = sigma_of_flow_time(t.clamp(eps, 1 - eps))
        else:  # cosmap
            t = 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)
            sigma = sigma_of_flow_time(t.clamp(eps, 1 - eps))
        return sigma * c.shift


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """p(t) of a logit-normal t: N(logit t; m, s) / (t (1 - t))."""
    logit = torch.log(t / (1 - t))
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
