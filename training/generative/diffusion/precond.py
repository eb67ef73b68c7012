"""What the network predicts, written as EDM's preconditioning: D(x_hat; sigma) = c_skip x_hat + c_out F(c_in x_hat).

Every prediction target is one set of coefficients in sigma space (x_hat = x0 + sigma eps); the network F sees
c_in x_hat and the family's noise input. Training minimises ||F - F_target||^2, F_target = (x0 - c_skip x_hat) /
c_out: the "natural" weight of each target, which is lambda(sigma) = 1 / c_out^2 on ||D - x0||^2 (eps: DDPM's
L_simple; edm: EDM's lambda = (sigma^2 + sd^2) / (sigma sd)^2; velocity: rectified flow's ||v - (eps - x0)||^2).

    eps       F ~ eps                      c_skip 1                  c_out -sigma                 c_in a(sigma)
    x0        F ~ x0                       c_skip 0                  c_out 1                      c_in a(sigma)
    v         F ~ alpha eps - s x0         c_skip 1 / (1 + sigma^2)  c_out -sigma / sqrt(1+sigma^2)  c_in alpha
              (Salimans & Ho; alpha = 1 / sqrt(1 + sigma^2), s = sigma alpha)
    velocity  F ~ eps - x0 = dx_t / dt     c_skip 1 / (1 + sigma)    c_out -sigma / (1 + sigma)   c_in 1 / (1 + sigma)
              (rectified flow: x_t = (1 - t) x0 + t eps, so x0 = x_t - t v)
    edm       F ~ (x0 - c_skip x_hat) / c_out   c_skip sd^2 / (sigma^2 + sd^2)   c_out sigma sd / sqrt(sigma^2 + sd^2)
                                                c_in 1 / sqrt(sigma^2 + sd^2)   (sd = sigma_data)

For eps and x0 the network sees x_t = a(sigma) x_hat, as DDPM's and rectified flow's networks do. VE and EDM have
a = 1, whose x_hat reaches sigma_max = 100 (80), so their networks both see VP's x_t = x_hat / sqrt(1 + sigma^2)
instead: one input scale for the two a = 1 families (EDM's VEPrecond keeps c_in = 1 for a U-Net that copes; a small
network does not; its EDMPrecond's 1 / sqrt(sigma^2 + sigma_data^2) is the `edm` prediction's own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from training.generative.diffusion.noise import Family

PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")


def coefficients(prediction: str, family: Family, sigma: torch.Tensor,
                 sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) at noise levels sigma."""
    one = torch.ones_like(sigma)
    # a = 1 families (ve, edm) get VP's a(sigma): a network's input stays O(1) at every noise level
    c_in = family.scale(sigma) if family.name in ("flow", "vp") else torch.rsqrt(1 + sigma**2)
    if prediction == "eps":
        return one, -sigma, c_in
    if prediction == "x0":
        return torch.zeros_like(sigma), one, c_in
    if prediction == "v":
        alpha = torch.rsqrt(1 + sigma**2)
        return alpha**2, -sigma * alpha, alpha
    if prediction == "velocity":
        return 1 / (1 + sigma), -sigma / (1 + sigma), 1 / (1 + sigma)
    if prediction == "edm":
        sd2 = sigma_data**2
        return sd2 / (sigma**2 + sd2), sigma * sigma_data * torch.rsqrt(sigma**2 + sd2), torch.rsqrt(sigma**2 + sd2)
    raise ValueError(f"unknown prediction {prediction!r}; known: {', '.join(PREDICTIONS)}")


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.ndim - 1)).to(like.dtype)


class Denoiser:
    """D(x_hat; sigma, cond) from a network F(x_in, timestep, cond) and one (family, prediction) pair."""

    def __init__(self, net: Callable, family: Family, prediction: str, sigma_data: float = 0.5):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; known: {', '.join(PREDICTIONS)}")
        self.net, self.family, self.prediction, self.sigma_data = net, family, prediction, sigma_data

    def network_io(self, x_hat: torch.Tensor, sigma: torch.Tensor):
        """(c_skip, c_out, the network's input, its timestep) for a batch (B, ...) at noise levels sigma (B,)."""
        c_skip, c_out, c_in = coefficients(self.prediction, self.family, sigma, self.sigma_data)
        return _col(c_skip, x_hat), _col(c_out, x_hat), _col(c_in, x_hat) * x_hat, self.family.timestep(sigma)

    def __call__(self, x_hat: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        sigma = sigma.expand(x_hat.shape[0]) if sigma.ndim == 0 else sigma
        c_skip, c_out, x_in, timestep = self.network_io(x_hat, sigma)
        return c_skip * x_hat + c_out * self.net(x_in, timestep, cond).to(x_hat.dtype)

    def target(self, x0: torch.Tensor, x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F_target = (x0 - c_skip x_hat) / c_out: what the network is trained to output."""
        c_skip, c_out, _, _ = self.network_io(x_hat, sigma)
        return (x0 - c_skip * x_hat) / c_out

    def loss_weight_on_denoiser(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2: the natural weight, expressed on ||D - x0||^2."""
        _, c_out, _ = coefficients(self.prediction, self.family, sigma, self.sigma_data)
        return 1 / c_out**2
