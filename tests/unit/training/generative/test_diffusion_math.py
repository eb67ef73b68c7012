"""The noise-level algebra against exact answers: marginals, conventions, densities, samplers on Gaussian data."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from gaussian_oracle import Gaussian, OracleNet

from training.generative.diffusion.loss import DiffusionConfig, DiffusionLoss
from training.generative.diffusion.noise import FAMILIES, flow_time, make_family
from training.generative.diffusion.precond import PREDICTIONS, Denoiser, coefficients
from training.generative.diffusion.samplers import SamplerConfig, evaluations, guided, sample
from training.generative.diffusion.time_samplers import TimeSampler, TimeSamplerConfig, logit_normal_density

F64 = torch.float64


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_has_the_marginals_its_formulas_give(name):
    fam = make_family(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    t = torch.tensor([fam.t_min + 0.3 * (fam.t_max - fam.t_min)], dtype=F64)
    a, b = fam.coefficients(t)
    sigma = fam.sigma(t).expand(200_000)
    eps = torch.randn(200_000, 2, generator=g, dtype=F64)
    x_t = fam.diffuse(x0.expand(200_000, 2), sigma, eps)
    assert torch.allclose(x_t.mean(0), a * x0, atol=4 * float(b) / math.sqrt(200_000) + 1e-9)
    assert torch.allclose(x_t.std(0), b.expand(2), rtol=0.01)
    assert torch.allclose(fam.t(fam.sigma(t)), t, rtol=1e-9)  # sigma(t) and t(sigma) are inverses
    assert torch.allclose(fam.sigma_of_timestep(fam.timestep(sigma[:1])), sigma[:1], rtol=1e-9)
    if name == "vp":
        assert torch.allclose(a**2 + b**2, torch.ones(1, dtype=F64))  # variance preserving
    if name == "flow":  # t = 1 is noise, t = 0 is data
        assert fam.coefficients(torch.tensor(1.0, dtype=F64)) == (0.0, 1.0)


def test_the_flow_velocity_target_is_the_time_derivative_of_the_path():
    """A reversed convention (x0 - eps, or t = 0 as noise) silently stops learning: pin the sign."""
    fam = make_family("flow")
    den = Denoiser(lambda x, t, c: x, fam, "velocity")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    t, h = torch.full((4,), 0.4, dtype=F64), 1e-6
    path = lambda tt: (1 - tt.view(-1, 1)) * x0 + tt.view(-1, 1) * eps  # noqa: E731
    dxdt = (path(t + h) - path(t - h)) / (2 * h)
    sigma = fam.sigma(t)
    target = den.target(x0, x0 + sigma.view(-1, 1) * eps, sigma)
    assert torch.allclose(target, dxdt, atol=1e-6) and torch.allclose(target, eps - x0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_prediction_target_decodes_back_to_the_clean_sample(prediction):
    fam = make_family("vp")
    den = Denoiser(None, fam, prediction)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 60.0], dtype=F64)
    x_hat = x0 + sigma.view(-1, 1) * eps
    den.net = lambda x_in, timestep, cond: den.target(x0, x_hat, sigma)  # a perfect network
    assert torch.allclose(den(x_hat, sigma), x0, atol=1e-9)


def test_logit_normal_in_t_is_log_normal_in_sigma():
    fam = make_family("flow")
    u = torch.rand(50_000, generator=torch.Generator().manual_seed(3), dtype=F64)
    z = torch.randn(50_000, generator=torch.Generator().manual_seed(4), dtype=F64)
    logit_t = TimeSampler(TimeSamplerConfig(kind="logit_normal", mean=0.3, std=0.8), fam).sigma(u, z)
    log_sigma = TimeSampler(TimeSamplerConfig(kind="log_normal", mean=0.3, std=0.8), fam).sigma(u, z)
    assert torch.equal(logit_t, log_sigma)  # one implementation
    t = flow_time(logit_t)
    assert torch.allclose(torch.log(t / (1 - t)), 0.3 + 0.8 * z, atol=1e-9)  # and t is logit-normal
    # the trap: a standard logit-normal almost never visits the ends
    t0 = flow_time(TimeSampler(TimeSamplerConfig(kind="logit_normal"), fam).sigma(u, z))
    assert 0.010 < float((t0 < 0.1).double().mean()) < 0.019 and 0.010 < float((t0 > 0.9).double().mean()) < 0.019
    tm = flow_time(TimeSampler(TimeSamplerConfig(kind="mode"), fam).sigma(u, z))
    assert float((tm < 0.1).double().mean()) > 3 * float((t0 < 0.1).double().mean())  # mode keeps the tails


def test_the_shift_is_sd3s_time_shift_in_flow_time():
    fam = make_family("flow")
    u, z = torch.linspace(0.01, 0.99, 99, dtype=F64), torch.zeros(99, dtype=F64)
    t = flow_time(TimeSampler(TimeSamplerConfig(kind="uniform"), fam).sigma(u, z))
    shifted = flow_time(TimeSampler(TimeSamplerConfig(kind="uniform", shift=3.0), fam).sigma(u, z))
    assert torch.allclose(shifted, 3 * t / (1 + 2 * t), atol=1e-9)


def test_a_density_and_a_loss_weight_expressing_it_are_not_both_applied():
    with pytest.raises(ValueError, match="same preference would apply twice"):
        DiffusionConfig(family="flow", time_sampler={"kind": "logit_normal"}, loss_weight="logit_normal")
    # the allowed form: uniform times weighted by the density give the logit-normal expectation
    cfg = DiffusionConfig(family="flow", time_sampler={"kind": "uniform"}, loss_weight="logit_normal")
    fam, g = make_family("flow"), torch.Generator().manual_seed(5)
    f = lambda t: torch.sin(3 * t) + t**2  # noqa: E731  (any per-t loss)
    u = torch.rand(400_000, generator=g, dtype=F64).clamp(1e-6, 1 - 1e-6)
    weighted = (logit_normal_density(u) * f(u)).mean()
    t_ln = flow_time(TimeSampler(TimeSamplerConfig(kind="logit_normal"), fam)(400_000, g).double())
    assert float(weighted) == pytest.approx(float(f(t_ln).mean()), abs=0.01)
    assert cfg.loss_weight == "logit_normal"


def test_the_logit_normal_weight_with_a_shift_is_sd3s_logit_normal_then_shift_with_mean_one():
    """Uniform times, shift 3, weighted by the logit-normal density of the time drawn before the shift: the weight
    averages 1 and the weighted times are SD3's logit-normal-then-shift (mean t 0.714). The density taken at the
    shifted time averaged 0.866, with a mean t of 0.592: neither distribution."""
    cfg = DiffusionConfig(family="flow", time_sampler={"kind": "uniform", "shift": 3.0}, loss_weight="logit_normal")
    loss, g = DiffusionLoss(cfg), torch.Generator().manual_seed(12)
    sigma = loss.time_sampler(400_000, g).double()
    w, t = loss.weight(sigma, loss.denoiser(None)).double(), flow_time(sigma)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.01)
    sd3 = flow_time(TimeSampler(TimeSamplerConfig(kind="logit_normal", shift=3.0), loss.family)(400_000, g).double())
    assert float((w * t).mean() / w.mean()) == pytest.approx(float(sd3.mean()), abs=0.005)
    assert float(sd3.mean()) == pytest.approx(0.714, abs=0.005)
    f = lambda t: torch.sin(3 * t) + t**2  # noqa: E731  (any per-t loss: the whole distribution, not only its mean)
    assert float((w * f(t)).mean()) == pytest.approx(float(f(sd3).mean()), abs=0.01)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_ve_and_edm_networks_see_their_inputs_at_one_scale(prediction):
    """Both a = 1 families feed the network x_hat / sqrt(1 + sigma^2) (VP's x_t) for eps and x0: the input of unit
    variance data stays O(1) at sigma_max (the EDM family fed x_hat itself: a std of 80)."""
    sigma = torch.tensor([0.002, 0.5, 10.0, 80.0], dtype=F64)
    ve, edm, vp = (coefficients(prediction, make_family(f), sigma) for f in ("ve", "edm", "vp"))
    for a, b in zip(ve, edm, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(edm[2], vp[2])
    x0 = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(13), dtype=F64)
    eps = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(14), dtype=F64)
    den = Denoiser(None, make_family("edm"), prediction)
    for s in (0.5, 80.0):
        x_in = den.network_io(x0 + s * eps, torch.full((20_000,), s, dtype=F64))[2]
        assert float(x_in.std()) == pytest.approx(1.0, abs=0.02)


# First-order samplers need hundreds of levels for a 2 % covariance on this Gaussian (Euler at 40 levels is 16 %
# low); Heun needs 64. The steps below are what each needs, not what a picture needs.
SAMPLER_CASES = [("flow", "velocity", "euler", 400), ("flow", "velocity", "heun", 64), ("vp", "eps", "ddim", 400),
                 ("vp", "v", "heun", 64), ("ve", "eps", "heun", 64), ("edm", "edm", "heun", 64),
                 ("edm", "x0", "euler_maruyama", 800), ("edm", "edm", "heun_churn", 64)]


@pytest.mark.parametrize(("family", "prediction", "method", "steps"), SAMPLER_CASES)
def test_sampling_the_exact_denoiser_reproduces_the_gaussian(family, prediction, method, steps):
    g, fam = Gaussian(), make_family(family)
    den = Denoiser(OracleNet(g, fam, prediction), fam, prediction)
    churn = {"method": "heun", "churn": 10.0} if method == "heun_churn" else {"method": method}
    cfg = SamplerConfig(steps=steps, **churn)
    gen = torch.Generator().manual_seed(6)
    x, nfe = sample(lambda x, s: den(x, s), torch.randn(20_000, 2, generator=gen, dtype=F64), cfg, fam, gen)
    assert nfe == evaluations(cfg.method, steps)
    assert torch.allclose(x.mean(0), g.mu, atol=0.01)
    assert torch.allclose(torch.cov(x.T), g.cov, atol=0.012)  # 4 % of the larger variance


def test_heun_error_falls_with_the_square_of_the_steps_euler_with_the_steps():
    g, fam = Gaussian(), make_family("edm")
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    exact = g.ode_solution(noise * fam.sigma_max, fam.sigma_max)

    def error(method: str, steps: int) -> float:
        x, _ = sample(g.denoise, noise, SamplerConfig(method=method, steps=steps), fam)
        return float((x - exact).norm(dim=1).mean())

    euler = [error("euler", n) for n in (32, 64, 128)]
    heun = [error("heun", n) for n in (32, 64, 128)]
    assert all(1.6 < euler[i] / euler[i + 1] < 2.5 for i in range(2)), euler  # first order
    assert all(3.2 < heun[i] / heun[i + 1] < 5.0 for i in range(2)), heun  # second order
    assert heun[0] < euler[-1]  # Heun at 63 evaluations beats Euler at 128


def test_ddim_is_euler_in_sigma_space():
    g = Gaussian()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    for family in ("vp", "flow"):
        fam = make_family(family)
        ddim, _ = sample(g.denoise, noise, SamplerConfig(method="ddim", steps=12), fam)
        euler, _ = sample(g.denoise, noise, SamplerConfig(method="euler", steps=12), fam)
        assert torch.allclose(ddim, euler, atol=1e-9)


def test_guidance_scale_zero_is_unconditional_and_one_is_conditional():
    def denoise(x, s, cond):  # conditioning shifts the mean
        return 0.5 * x + cond

    x, s = torch.randn(4, 2, dtype=F64), torch.ones(4, dtype=F64)
    cond, uncond = torch.full((4, 2), 2.0, dtype=F64), torch.zeros(4, 2, dtype=F64)
    assert torch.equal(guided(denoise, cond, uncond, 0.0)(x, s), denoise(x, s, uncond))
    assert torch.equal(guided(denoise, cond, uncond, 1.0)(x, s), denoise(x, s, cond))
    assert torch.allclose(guided(denoise, cond, uncond, 3.0)(x, s), 0.5 * x + 6.0)  # uncond + 3 (cond - uncond)


def test_sampling_with_another_shift_than_trained_warns():
    g, fam = Gaussian(), make_family("flow")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample(g.denoise, torch.randn(2, 2, dtype=F64), SamplerConfig(steps=2, shift=3.0), fam, trained_shift=1.0)
    assert any("trained with shift 1" in str(w.message) for w in caught)


def test_min_snr_weight_is_min_snr_gamma_on_the_denoiser():
    cfg = DiffusionConfig(family="vp", prediction="eps", loss_weight="min_snr", min_snr_gamma=5.0)
    loss = DiffusionLoss(cfg)
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=F64)
    w = loss.weight(sigma, loss.denoiser(None))
    assert torch.allclose(w, torch.clamp(1 / sigma**2, max=5.0) * sigma**2)  # eps: min(SNR, 5) / SNR


class TinyNet(torch.nn.Module):
    """F(x_in, timestep): an MLP on the input and a sinusoidal embedding of the timestep (0..1000)."""

    def __init__(self, dim: int = 2, width: int = 128):
        super().__init__()
        self.freqs = torch.exp(torch.linspace(0, -math.log(1000), 16))
        nn = torch.nn
        self.net = nn.Sequential(nn.Linear(dim + 32, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x_in, timestep, cond=None):
        angles = timestep.float().view(-1, 1) * self.freqs
        return self.net(torch.cat([x_in.float(), angles.sin(), angles.cos()], dim=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_small_network_approaches_the_analytic_minimum_of_each_familys_loss(family):
    """The exact denoiser minimises every family's loss; a trained MLP must get within 3 % of it on fresh data
    (it gets within 0.2 %: flow 0.7050 vs 0.7040, vp 0.1565 vs 0.1560, ve 0.3551 vs 0.3546, edm 0.8993 vs 0.8988)."""
    torch.manual_seed(0)
    g, loss = Gaussian(), DiffusionLoss(DiffusionConfig(family=family))
    net, gen = TinyNet(), torch.Generator().manual_seed(9)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: one thread is fastest, and steady under load
    try:
        for _ in range(1500):
            per_sample, _ = loss(net, g.sample(512, gen).float(), generator=gen)
            opt.zero_grad()
            per_sample.mean().backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    x0 = g.sample(20_000, torch.Generator().manual_seed(10))
    oracle = OracleNet(g, loss.family, loss.prediction)

    def evaluate(model) -> float:
        with torch.no_grad():
            return float(loss(model, x0, generator=torch.Generator().manual_seed(11))[0].mean())

    best, trained, untrained = evaluate(oracle), evaluate(net), evaluate(TinyNet())
    print(f"{family}: analytic minimum {best:.4f}, trained {trained:.4f}, untrained {untrained:.4f}")
    assert best * 0.99 < trained < best * 1.03, (best, trained)
    assert trained - best < 0.2 * (untrained - best)  # training closed most of the gap: the bar means something
