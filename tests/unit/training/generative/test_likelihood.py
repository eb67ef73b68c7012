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
    Preprocess,
    bits_per_dim,
    check_finite,
    dequantize,
    gaussian_log_prob,
    heldout_bits_per_dim,
    hutchinson_probes,
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


def test_every_held_out_sample_gets_its_own_hutchinson_probes_whatever_its_batch():
    """Probes come from (seed, the sample's index in the set): sample 2 of a set scored two at a time gets its own
    probe, not sample 0's, so the standard error over the set counts independent draws."""
    batched = hutchinson_probes(0, [0, 1, 2, 3], 2, (3, 4, 4))  # (P, B, 3, 4, 4)
    assert batched.shape == (2, 4, 3, 4, 4) and set(batched.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(batched[:, 0], batched[:, 2]) and not torch.equal(batched[0, 0], batched[1, 0])
    assert torch.equal(hutchinson_probes(0, [2, 3], 2, (3, 4, 4)), batched[:, 2:])  # the batch plays no part
    g = Gaussian()
    x = g.sample(1, torch.Generator().manual_seed(1)).expand(2, 2)  # one point twice
    ode = OdeLikelihood(g.denoise, 80.0, cfg=LikelihoodConfig(seed=0))
    first, second = ode(x, torch.tensor([0, 1])), ode(x, torch.tensor([2, 3]))
    assert not torch.allclose(first, second, atol=1e-3)  # another batch of the set, other probes
    alone = ode(x[:1], torch.tensor([2]))
    assert torch.allclose(alone, second[:1], atol=1e-4)  # sample 2 alone or batched: its own probe (ODE tolerance)


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


def test_the_logit_preprocessing_counts_its_log_det():
    """p = a + (1 - 2a) y / 256 is uniform on [a, 1 - a] when y is uniform on [0, 256), so x = logit(p) has the
    density sigmoid'(x) / (1 - 2a) per dimension: that model must score exactly 8 bits/dim."""
    pixels = torch.randint(0, 256, (4, 3, 2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    pre = Preprocess("logit", alpha=0.05)
    x, log_det = pre(dequantize(pixels, torch.Generator().manual_seed(5)))
    log_p = (torch.nn.functional.logsigmoid(x) + torch.nn.functional.logsigmoid(-x) - math.log(0.9)).flatten(1).sum(1)
    assert torch.allclose(bits_per_dim(log_p, log_det, 12), torch.full((4,), 8.0, dtype=F64), atol=1e-12)
    # and the log-det is the Jacobian's (elementwise map: the sum of log-derivatives), by autograd
    y = dequantize(pixels, torch.Generator().manual_seed(5)).requires_grad_(True)
    (grad,) = torch.autograd.grad(pre(y)[0].sum(), y)
    assert torch.allclose(log_det, grad.log().flatten(1).sum(1), atol=1e-10)


@pytest.mark.parametrize("name", ["signed_unit", "logit"])
def test_model_space_maps_back_to_the_same_pixels(name):
    pixels = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    pre = Preprocess(name)
    for seed in range(3):
        x, _ = pre(dequantize(pixels, torch.Generator().manual_seed(seed)))
        assert torch.equal(pre.to_pixels(x.float()), pixels)


def test_heldout_bits_per_dim_names_a_non_finite_sample_and_repeats_its_noise():
    pixels = torch.randint(0, 256, (5, 3, 2, 2), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    names = [f"00000.tar/{i:04d}" for i in range(5)]

    def uniform(x, cond):  # density 1/2 per dimension on [-1, 1]: 8 bits/dim, except sample 3 when poisoned
        out = torch.full((len(x),), x[0].numel() * math.log(0.5), dtype=x.dtype)
        if cond is not None:
            out[cond == 1] = float("nan")
        return out

    got = heldout_bits_per_dim(uniform, pixels, names, batch_size=2)
    assert got.as_dict()["bits_per_dim"] == pytest.approx(8.0, abs=1e-5) and got.as_dict()["samples"] == 5
    with pytest.raises(NonFiniteLikelihood, match="00000.tar/0003"):
        heldout_bits_per_dim(uniform, pixels, names, torch.tensor([0, 0, 0, 1, 0]), batch_size=2)


def test_heldout_bits_per_dim_through_the_ode_matches_the_closed_form_density():
    """The diffusion path through the one function every generator's evaluation calls: a Gaussian fitted to 8-bit
    "images" of two pixels, scored by its exact denoiser's probability-flow ODE and by its closed-form density."""
    g = Gaussian(mu=torch.tensor([0.1, -0.2], dtype=F64), cov=torch.tensor([[0.09, 0.04], [0.04, 0.06]], dtype=F64))
    x = g.sample(8, torch.Generator().manual_seed(7)).clamp(-0.99, 0.99)
    pixels = ((x + 1) * 128).floor().to(torch.uint8).view(8, 1, 1, 2)
    names = [f"k{i}" for i in range(8)]
    cfg = LikelihoodConfig(trace="exact", rtol=1e-6, atol=1e-6)
    ode = OdeLikelihood(g.denoise, sigma_max=500.0, cfg=cfg)
    via_ode = heldout_bits_per_dim(lambda v, c: ode(v.flatten(1)), pixels, names, dtype=F64)
    via_density = heldout_bits_per_dim(lambda v, c: true_log_density(g, v.flatten(1), cfg.sigma_min), pixels, names,
                                       dtype=F64)
    # measured: 6e-4 bits/dim at most (the prior ignores the data mean: ~|mu| / sigma_max nats)
    assert torch.allclose(via_ode.per_sample, via_density.per_sample, atol=2e-3), via_ode.per_sample
