"""The probability-flow ODE likelihood against a closed-form density, and the bookkeeping of bits/dim."""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_oracle import Gaussian

from training.generative.likelihood import (
    LikelihoodConfig,
    NonFiniteLikelihood,
    OdeLikelihood,
    bits_per_dim,
    check_finite,
    dequantize,
    gaussian_log_prob,
    to_signed_unit,
)

F64 = torch.float64


def true_log_density(g: Gaussian, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; mu, Sigma + sigma^2 I): the data's density at the ODE's starting noise level."""
    dist = torch.distributions.MultivariateNormal(g.mu, g.cov + sigma**2 * torch.eye(len(g.mu), dtype=F64))
    return dist.log_prob(x)


def test_the_ode_likelihood_with_exact_trace_matches_the_true_density():
    g = Gaussian()
    x = g.sample(16, torch.Generator().manual_seed(0))
    cfg = LikelihoodConfig(trace="exact", rtol=1e-7, atol=1e-7)
    # the prior N(0, sigma_max^2 + sigma_data^2) ignores the data's mean: an error ~ |x(sigma_max)| |mu| / sigma_max^2
    # = |mu| / sigma_max, measured 0.016 nats at sigma_max = 80 for this mean of 0.67, 0.0026 at 500, 0.00026 at 5000
    # (images in [-1, 1] have a mean near 0)
    got = OdeLikelihood(g.denoise, sigma_max=5000.0, sigma_data=0.5, cfg=cfg)(x)
    want = true_log_density(g, x, cfg.sigma_min)
    assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()


def test_hutchinsons_estimate_is_unbiased_across_probe_seeds():
    g = Gaussian()
    x = g.sample(4, torch.Generator().manual_seed(1))
    exact = OdeLikelihood(g.denoise, 80.0, cfg=LikelihoodConfig(trace="exact"))(x)
    runs = torch.stack([OdeLikelihood(g.denoise, 80.0, cfg=LikelihoodConfig(seed=s))(x) for s in range(48)])
    spread = runs.std(0)
    assert (spread > 1e-3).all()  # one probe really is a noisy estimate
    assert ((runs.mean(0) - exact).abs() < 3 * spread / math.sqrt(48) + 1e-3).all()
    more = OdeLikelihood(g.denoise, 80.0, cfg=LikelihoodConfig(seed=0, probes=16))(x)
    assert (more - exact).abs().mean() < (runs[0] - exact).abs().mean()  # more probes, less error
    again = OdeLikelihood(g.denoise, 80.0, cfg=LikelihoodConfig(seed=0))(x)
    assert torch.equal(again, runs[0])  # fixed seeds: the same number twice


def test_bits_per_dim_counts_the_dequantisation_and_scaling():
    """A uniform density on [-1, 1]^D is 8 bits/dim of 8-bit data, whatever D."""
    pixels = torch.randint(0, 256, (3, 3, 4, 4), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    y = dequantize(pixels, torch.Generator().manual_seed(3))
    assert ((y >= pixels.double()) & (y < pixels.double() + 1)).all()
    x, log_det = to_signed_unit(y)
    dims = x[0].numel()
    uniform_log_p = torch.full((3,), dims * math.log(1 / 2), dtype=F64)  # density 1/2 per dimension on [-1, 1]
    assert torch.allclose(bits_per_dim(uniform_log_p, log_det, dims), torch.full((3,), 8.0, dtype=F64))
    # and a standard normal's density, checked against the closed form
    assert torch.allclose(gaussian_log_prob(x, 1.0), torch.distributions.Normal(0, 1).log_prob(x).flatten(1).sum(1))


def test_a_non_finite_likelihood_names_the_sample():
    with pytest.raises(NonFiniteLikelihood, match="shard-3/key-7"):
        check_finite(torch.tensor([1.0, float("nan")]), ["shard-3/key-0", "shard-3/key-7"])
