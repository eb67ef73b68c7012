"""Samplers in sigma space: they see only a denoiser D(x_hat; sigma), so a model of any family samples with any one.

    euler           the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma, first order
    heun            EDM's Algorithm 2: Euler then a trapezoidal correction (second order), optional churn
                    (S_churn, S_tmin, S_tmax, S_noise); N steps cost 2N - 1 evaluations (the last step is Euler)
    ddim            DDIM (eta = 0) in its own form, x_t' = a' x0_hat + b' eps_hat, on the family's (a, b); EDM
                    showed it is Euler in sigma space, and the tests check that it is
    euler_maruyama  the reverse SDE dx = 2 (x - D) / sigma dsigma + sqrt(2 sigma |dsigma|) z, ending with one
                    denoising step to sigma = 0

Noise levels follow EDM's rho-schedule, sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho, then 0, each multiplied by the shift k the model was trained with (SD3's shift).
Classifier-free guidance: D = D_uncond + w (D_cond - D_uncond): w = 0 is unconditional, w = 1 conditional; with
0 < w != 1 each evaluation runs the network on the conditional and unconditional batch together (one forward of 2B).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

from training.generative.config import SamplerConfig  # noqa: F401  (its config, importable here)
from training.generative.diffusion.noise import Family
from training.generative.seeds import randn_rows

SAMPLERS = ("euler", "heun", "ddim", "euler_maruyama")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, shift: float = 1.0):
    """EDM's schedule: `steps` levels from sigma_max down to sigma_min, then 0 (float64, length steps + 1)."""
    i = torch.arange(steps, dtype=torch.float64)
    if steps == 1:
        levels = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        levels = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([levels * shift, torch.zeros(1, dtype=torch.float64)])


class Counted:
    """A denoiser that counts its evaluations (one per call, whatever the batch): the samplers' honest NFE."""

    def __init__(self, denoise: Callable):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoise(x, sigma.to(x.dtype).expand(x.shape[0]))


def guided(denoise: Callable, cond, uncond, scale: float) -> Callable:
    """D(x; sigma) with classifier-free guidance; `cond`/`uncond` are batches of conditioning (B, ...)."""
    if scale == 1.0:
        return lambda x, s: denoise(x, s, cond)
    if scale == 0.0:
        return lambda x, s: denoise(x, s, uncond)

    def both(x, s):
        joined = torch.cat([x, x]), torch.cat([s, s])
        pair = (torch.cat([u, c]) for u, c in zip(uncond, cond, strict=True)) if isinstance(cond, tuple) \
            else torch.cat([uncond, cond])
        d_uncond, d_cond = denoise(*joined, tuple(pair) if isinstance(cond, tuple) else pair).chunk(2)
        return d_uncond + scale * (d_cond - d_uncond)

    return both


def _churn(cfg: SamplerConfig, sigma: float, steps: int) -> float:
    if cfg.churn > 0 and cfg.churn_tmin <= sigma <= cfg.churn_tmax:
        return min(cfg.churn / steps, math.sqrt(2) - 1)
    return 0.0


@torch.no_grad()
def sample(denoise: Callable, noise: torch.Tensor, cfg: SamplerConfig, family: Family,
           generator: torch.Generator | Sequence[torch.Generator] | None = None,
           trained_shift: float = 1.0) -> tuple[torch.Tensor, int]:
    """Draw x0 from unit `noise` (B, ...) with denoiser `denoise(x_hat, sigma (B,))`; return (x0, evaluations).
    Churn and Euler-Maruyama noise come from `generator`: one CPU generator per row (row i's from generator[i]
    only, so a row's sample does not depend on its batch-mates: what `generate.Generator` passes), or one for the
    whole batch (a batch of thousands drawn at once, in tests)."""
    shift = cfg.shift if cfg.shift is not None else trained_shift
    if not math.isclose(shift, trained_shift):
        warnings.warn(f"sampling with shift {shift:g}, but the model was trained with shift {trained_shift:g}: the "
                      "noise levels it learned differ from the ones sampled", stacklevel=2)
    sigmas = karras_sigmas(cfg.steps, cfg.sigma_min or family.sigma_min, cfg.sigma_max or family.sigma_max,
                           cfg.rho, shift).tolist()
    D = Counted(denoise)
    x = noise * sigmas[0]

    def randn_like(t: torch.Tensor) -> torch.Tensor:  # drawn on the CPU, moved: the device's RNG plays no part
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
        return randn_rows(t.shape[1:], generator, t.dtype, t.device)

    def level(s: float) -> torch.Tensor:
        return torch.tensor(s, dtype=x.dtype, device=x.device)

    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        if cfg.method == "ddim":
            x = _ddim_step(D, x, s, s_next, family, level)
            continue
        if cfg.method == "euler_maruyama":
            if s_next == 0:
                x = D(x, level(s))  # the last step denoises: an SDE step to sigma = 0 would add noise of scale s
            else:
                h = s_next - s  # < 0
                x = x + 2 * h * (x - D(x, level(s))) / s + math.sqrt(2 * s * -h) * randn_like(x)
            continue
        gamma = _churn(cfg, s, n)
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * cfg.churn_noise * randn_like(x)
        d = (x - D(x, level(s_hat))) / s_hat
        x_next = x + (s_next - s_hat) * d
        if cfg.method == "heun" and s_next != 0:  # second order, except the last step to sigma = 0
            d_next = (x_next - D(x_next, level(s_next))) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
    return x, D.calls


def _ddim_step(D: Counted, x_hat: torch.Tensor, s: float, s_next: float, family: Family, level) -> torch.Tensor:
    """One deterministic DDIM step written in x_t = a x0 + b eps terms (then back to sigma space)."""
    sig, sig_next = level(s), level(s_next)
    a, a_next = family.scale(sig), family.scale(sig_next)
    b, b_next = a * sig, a_next * sig_next
    x_t = a * x_hat
    x0 = D(x_hat, sig)
    eps = (x_t - a * x0) / b
    x_t_next = a_next * x0 + b_next * eps
    return x_t_next / a_next


def evaluations(method: str, steps: int) -> int:
    """Network evaluations of a sampler run (per conditioning pass): heun 2N - 1, the others N."""
    return 2 * steps - 1 if method == "heun" else steps
