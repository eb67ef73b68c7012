"""Device-strict runs of the generators: every tensor the diffusion and flow tasks create while training, sampling
and scoring likelihoods lands on the model's device. No GPU needed: the model sits on a fake CUDA device
(`fake_cuda`, FakeTensorMode) or on `meta`, where a tensor left on the CPU fails the op that meets it.

What runs how, and why:

- forward-only paths (the training loss's forward, every sampler, classifier-free guidance, the held-out loss, a
  flow's inverse) run on fake CUDA;
- paths that take gradients inside (the ODE likelihood's divergence, a flow's training backward) run on `meta`:
  the autograd engine asks the CUDA driver for a context for a fake CUDA tensor, and has no such need on meta;
- the ODE likelihood's solver is torchdiffeq's adaptive dopri5, whose step control reads values (`.item()`), which
  neither fake nor meta tensors have: `strict_odeint` stands in for it (the same `torch.cat` of the state, one Euler
  step through the real vector field), and the real torchdiffeq is run until its first read of a value, which must
  be the only thing that stops it;
- what reads values by design runs on the CPU and is not covered here: bits/dim's NaN check and means
  (`heldout_bits_per_dim` brings log p to the CPU first), the loss-per-time bins' read at a log step, the engine's
  `float(loss)`.
"""

from __future__ import annotations

import pytest
import torch
from fake_cuda import strict_odeint

from training.generative.config import LikelihoodConfig
from training.generative.likelihood import OdeLikelihood

META = torch.device("meta")


def meta_denoiser():
    net = torch.nn.Conv2d(3, 3, 1).to(META)
    return lambda z, s: net(z) / (1 + s.view(-1, 1, 1, 1))


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_the_ode_likelihood_runs_on_the_models_device(trace, monkeypatch):
    """The running log-density, the time grid and the probes are created on x's device (they were on the CPU:
    torchdiffeq's torch.cat of the state raised for every CUDA evaluation)."""
    import torchdiffeq

    monkeypatch.setattr(torchdiffeq, "odeint", strict_odeint)
    x = torch.randn(2, 3, 2, 2, device=META)
    log_p = OdeLikelihood(meta_denoiser(), 80.0, cfg=LikelihoodConfig(trace=trace, probes=2))(x, torch.tensor([4, 7]))
    assert log_p.device == META and log_p.shape == (2,)


def test_torchdiffeq_itself_takes_the_state_on_the_models_device():
    """The real solver on meta gets past joining the state and stops only at its first read of a value (its step
    control), which a meta tensor does not have: no device error on the way."""
    x = torch.randn(2, 3, 2, 2, device=META)
    with pytest.raises(RuntimeError, match=r"item\(\) cannot be called on meta tensors"):
        OdeLikelihood(meta_denoiser(), 80.0, cfg=LikelihoodConfig(trace="exact"))(x)
