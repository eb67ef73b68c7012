"""The diffusion loss, EDM-style: the loss object draws noise levels, noises x0, calls the network and weighs it, so
a training loop never asks which family, prediction or density it trains.

    loss = w(sigma) ||F(c_in x_hat; sigma) - F_target||^2,   sigma ~ the time sampler,  x_hat = x0 + sigma eps

w is 1 ("natural": each prediction's own weight, see `precond`), or Min-SNR-gamma (Hang et al. 2023) expressed
on the network output, or a density (`logit_normal`, diffusers' `weighting_scheme`) that reweights uniformly drawn
flow times. A density weight and a non-uniform time sampler express the same preference twice (diffusers shipped
weighting schemes that had no effect until it was fixed): that combination is refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from training.generative.diffusion.noise import Family, flow_time, make_family
from training.generative.diffusion.precond import Denoiser
from training.generative.diffusion.time_samplers import TimeSampler, TimeSamplerConfig, logit_normal_density


class DiffusionConfig(StrictModel):
    """The objective: family, what the network predicts, the training noise density and the loss weight."""

    family: Literal["flow", "vp", "ve", "edm"] = "flow"
    prediction: Literal["eps", "x0", "v", "velocity", "edm"] | None = Field(
        None, description="default: the family's own (flow velocity, vp eps, ve eps, edm edm)")
    time_sampler: TimeSamplerConfig | None = Field(None, description="default: the family's own density")
    loss_weight: Literal["natural", "min_snr", "logit_normal"] = "natural"
    min_snr_gamma: float = Field(5.0, gt=0)
    sigma_data: float = Field(0.5, gt=0, description="EDM's sigma_data (data std; [-1, 1] images ~ 0.5)")

    @model_validator(mode="after")
    def _one_preference(self) -> DiffusionConfig:
        if self.loss_weight == "logit_normal":
            sampler = self.sampler_config()
            if self.family != "flow" or sampler.kind != "uniform":
                raise ValueError("loss_weight logit_normal reweights uniformly drawn flow times; with time_sampler "
                                 f"{sampler.kind} (family {self.family}) the same preference would apply twice: use "
                                 "time_sampler {kind: logit_normal} with loss_weight natural, or family flow with "
                                 "time_sampler {kind: uniform}")
        return self

    def family_obj(self) -> Family:
        return make_family(self.family)

    def prediction_name(self) -> str:
        return self.prediction or self.family_obj().default_prediction

    def sampler_config(self) -> TimeSamplerConfig:
        return self.time_sampler or TimeSamplerConfig(**make_family(self.family).default_time_sampler)

    def describe(self) -> dict:
        """What a checkpoint records, so that sampling uses (or warns about) the same choices."""
        return {"family": self.family, "prediction": self.prediction_name(),
                "time_sampler": self.sampler_config().model_dump(), "loss_weight": self.loss_weight,
                "shift": self.sampler_config().shift, "sigma_data": self.sigma_data}


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
        ts = self.cfg.sampler_config()
        return logit_normal_density(flow_time(sigma.double()).clamp(1e-6, 1 - 1e-6), ts.mean, ts.std).float()

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
