"""The diffusion loss, EDM-style: the loss object draws noise levels, noises x0, calls the network and weighs it, so
a training loop never asks which family, prediction or density it trains.

    loss = w(sigma) ||F(c_in x_hat; sigma) - F_target||^2,   sigma ~ the time sampler,  x_hat = x0 + sigma eps

w is 1 ("natural": each prediction's own weight, see `precond`), or Min-SNR-gamma (Hang et al. 2023) expressed on the
network output, or a density (`logit_normal`, diffusers' `weighting_scheme`) that reweights uniformly drawn flow times,
evaluated at the time drawn before the resolution shift (so uniform + weight + shift k is SD3's logit-normal-then-
shift, and the weight's mean is 1). A density weight and a non-uniform time sampler express the same preference twice
(diffusers shipped weighting schemes that had no effect until it was fixed): that combination is refused.
"""

from __future__ import annotations

import torch

from training.generative.diffusion.config import DiffusionConfig
from training.generative.diffusion.noise import flow_time
from training.generative.diffusion.precond import Denoiser
from training.generative.diffusion.time_samplers import TimeSampler, logit_normal_density


class DiffusionLoss:
    """Calls the network on noised data and returns the per-sample loss with the noise levels it drew."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.family = cfg.family_obj()
        self.prediction = cfg.prediction_name()
        self.time_sampler = TimeSampler(cfg.sampler_config(), self.family)

    def denoiser(self, net) -> Denoiser:
        return Denoiser(net, self.family, self.prediction, self.cfg.sigma_data)

    def weight(self, sigma: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        """w(sigma) on ||F - F_target||^2 (1 = the prediction's natural weight)."""
        if self.cfg.loss_weight == "natural":
            return torch.ones_like(sigma)
        if self.cfg.loss_weight == "min_snr":  # min(SNR, gamma) on ||D - x0||^2, SNR = 1 / sigma^2
            natural = denoiser.loss_weight_on_denoiser(sigma)
            return torch.clamp(1 / sigma**2, max=self.cfg.min_snr_gamma) / natural
        # the density of the time drawn before the shift (sigma -> k sigma): uniform t weighted by it, then shifted,
        # is SD3's logit-normal-then-shift, and the weight's mean stays 1 whatever k
        ts = self.cfg.sampler_config()
        t = flow_time(sigma.double() / ts.shift).clamp(1e-6, 1 - 1e-6)
        return logit_normal_density(t, ts.mean, ts.std).float()

    def __call__(self, net, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
                 sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample loss (B,), sigma (B,)) for clean data x0 (B, ...)."""
        if sigma is None:
            sigma = self.time_sampler(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_hat = x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * eps
        den = self.denoiser(net)
        _, _, x_in, timestep = den.network_io(x_hat, sigma)
        out = net(x_in, timestep, cond)
        err = (out.float() - den.target(x0, x_hat, sigma).float()) ** 2
        per_sample = err.flatten(1).mean(1) * self.weight(sigma, den)
        return per_sample, sigma
