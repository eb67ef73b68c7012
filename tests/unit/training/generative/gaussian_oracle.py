"""Gaussian data N(mu, Sigma): the exact denoiser, the exact probability-flow ODE solution, and a network that
outputs exactly what each (family, prediction) pair should, for testing samplers and losses against the maths.

    D(x; sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)
    PF-ODE from sigma_max to 0:  x0 = mu + Q diag(sqrt(lam / (lam + sigma_max^2))) Q^T (x - mu)
    posterior covariance: Cov(x0 | x_hat) = Q diag(lam sigma^2 / (lam + sigma^2)) Q^T
"""

from __future__ import annotations

import torch

from training.generative.diffusion.precond import coefficients

MU = torch.tensor([0.6, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.30, 0.12], [0.12, 0.15]], dtype=torch.float64)


class Gaussian:
    def __init__(self, mu: torch.Tensor = MU, cov: torch.Tensor = COV):
        self.mu, self.cov = mu, cov
        self.lam, self.q = torch.linalg.eigh(cov)  # (d,), (d, d)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, len(self.mu), generator=generator, dtype=torch.float64)
        return self.mu + (z * self.lam.sqrt()) @ self.q.T

    def _apply(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """mu + Q diag(gain) Q^T (x - mu), gain (B, d) per sample."""
        y = (x - self.mu) @ self.q  # (B, d) in the eigenbasis
        return self.mu + (y * gain) @ self.q.T

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        s2 = sigma.to(x.dtype).view(-1, 1) ** 2
        return self._apply(x, self.lam / (self.lam + s2))

    def ode_solution(self, x: torch.Tensor, sigma_max: float) -> torch.Tensor:
        return self._apply(x, (self.lam / (self.lam + sigma_max**2)).sqrt().expand_as(x))

    def posterior_var(self, sigma: torch.Tensor) -> torch.Tensor:
        """Mean over dimensions of Cov(x0 | x_hat) at each sigma (B,)."""
        s2 = sigma.double().view(-1, 1) ** 2
        return (self.lam * s2 / (self.lam + s2)).mean(1)


class OracleNet:
    """F(x_in, timestep) that makes Denoiser(F, family, prediction) the exact Gaussian denoiser."""

    def __init__(self, gaussian: Gaussian, family, prediction: str, sigma_data: float = 0.5):
        self.g, self.family, self.prediction, self.sigma_data = gaussian, family, prediction, sigma_data

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, cond=None) -> torch.Tensor:
        sigma = self.family.sigma_of_timestep(timestep.double())
        c_skip, c_out, c_in = coefficients(self.prediction, self.family, sigma, self.sigma_data)
        x_hat = x_in / c_in.view(-1, 1)
        return (self.g.denoise(x_hat, sigma) - c_skip.view(-1, 1) * x_hat) / c_out.view(-1, 1)
