"""Held-out bits/dim as `winnow eval` computes it for a denoiser: through the probability-flow ODE, with the
dequantisation and the [-1, 1] scaling counted, checked against a closed form; a non-finite sample is named by uid.

A zero-initialised MMDiT (adaLN-Zero: its output is exactly 0) with rectified flow's velocity target is the denoiser
D(x; sigma) = x / (1 + sigma), whose ODE dx/dsigma = x / (1 + sigma) carries x to x (1 + s_max) / (1 + s_min):
the model is the Gaussian N(0, std^2 I), std = sqrt(s_max^2 + sigma_data^2) (1 + s_min) / (1 + s_max), in closed
form, while the evaluation runs the real network, the conditioner, the solver and the bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from training_diffusion import tiny_config

from training.generative.diffusion.task import DiffusionTask
from training.generative.evaluation import evaluate_generator, likelihood
from training.generative.flows.data import first_samples
from training.generative.likelihood import (
    NonFiniteLikelihood,
    Preprocess,
    bits_per_dim,
    dequantize,
    gaussian_log_prob,
    to_signed_unit,
)

N, SIDE = 4, 8


@pytest.fixture(scope="module")
def zero_denoiser(untrained, shapes):
    cfg = tiny_config(untrained, data={"resolution": SIDE}, eval={"heldout": shapes["test"], "synthetic_test": False,
                                       "likelihood": {"samples": N, "batch_size": N, "seed": 3}})
    task = DiffusionTask(cfg, shapes["pool"])
    task.setup(0, 1, torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread (measured 0.3 s; 50 s with two threads on an overloaded box)
    yield cfg, task.generator
    torch.set_num_threads(threads)


def bits(cfg, density) -> dict:
    return evaluate_generator(None, cfg.eval, cfg.data.resolution, metrics={"likelihood": likelihood},
                              density=density)["likelihood"]


def test_the_ode_bits_per_dim_of_a_denoiser_is_its_closed_form_with_the_preprocessing_counted(zero_denoiser, shapes):
    cfg, gen = zero_denoiser
    probe = torch.randn(2, 3, SIDE, SIDE)
    assert torch.allclose(gen.denoiser(probe, torch.full((2,), 0.7), gen_cond(gen, 2)), probe / 1.7,
                          atol=1e-6)  # the closed form's premise: D = x / (1 + sigma)
    got = bits(cfg, gen.density(cfg.eval.likelihood))
    assert got["samples"] == N and got["preprocess"] == "signed_unit" and "Hutchinson, 1 Rademacher" in got["method"]

    pixels, _, _ = first_samples([shapes["test"]], N, SIDE)
    x, log_det = to_signed_unit(dequantize(pixels, torch.Generator().manual_seed(3)))  # the same noise (seed 3)
    s_min, s_max = cfg.eval.likelihood.sigma_min, 200.0  # rectified flow's sigma_max
    std = math.sqrt(s_max**2 + 0.5**2) * (1 + s_min) / (1 + s_max)
    want = bits_per_dim(gaussian_log_prob(x, std), log_det, x[0].numel())
    # measured: 3e-6 bits/dim apart (dopri5 at rtol = atol = 1e-5, float32); Hutchinson is exact for a multiple of I
    assert got["bits_per_dim"] == pytest.approx(float(want.mean()), abs=1e-3)
    assert math.isfinite(got["bits_per_dim"]) and 8.0 < got["bits_per_dim"] < 9.0
    # without the scaling's log-det (D log(2 / 256)) the number would be 7 bits/dim lower: it is counted
    assert float(-(gaussian_log_prob(x, std) / (x[0].numel() * math.log(2))).mean()) == pytest.approx(
        got["bits_per_dim"] - 7.0, abs=1e-3)


def gen_cond(gen, n: int):
    tokens, pooled = gen.conditioner(["a red circle"] * n)
    return tokens, pooled, torch.zeros(n)


class Poisoned:
    """A uniform density on [-1, 1]^D (8 bits/dim) that is NaN for the held-out image at index `bad`."""

    def __init__(self, bad: int | None):
        self.bad, self.preprocess, self.method = bad, Preprocess("signed_unit"), "uniform, poisoned"

    def __call__(self, x, captions, index=None):
        out = torch.full((len(x),), x[0].numel() * math.log(0.5), dtype=x.dtype)
        if self.bad is not None:
            out[self.bad] = float("nan")
        return out


def test_a_non_finite_likelihood_is_an_error_naming_the_samples_uid(zero_denoiser):
    cfg, _ = zero_denoiser
    # make_testset's sample i has uid f"{i:032x}", key f"{i:09d}", i from 10_000_000
    with pytest.raises(NonFiniteLikelihood, match=r"uid 0{26}989683 \(00000\.tar/010000003\)"):
        bits(cfg, Poisoned(3))
    assert bits(cfg, Poisoned(None))["bits_per_dim"] == pytest.approx(8.0)  # unpoisoned: a uniform model's 8
