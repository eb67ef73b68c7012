"""Device-strict runs of the generators: every tensor the diffusion and flow tasks create while training, sampling
and scoring likelihoods lands on the model's device. No GPU needed: the model sits on a fake CUDA device
(`fake_cuda`, FakeTensorMode) or on `meta`, where a tensor left on the CPU fails the op that meets it.

What runs how, and why:

- forward-only paths (the training loss's forward, every sampler, classifier-free guidance, the held-out loss, a
  flow's inverse) run on fake CUDA;
- paths that take gradients (the ODE likelihood's divergence, a diffusion or flow training step's backward and
  EMA update) run on `meta`: the autograd engine asks the CUDA driver for a context for a fake CUDA tensor, and
  has no such need on meta;
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
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")  # deepcopy of a module


class LeavesATensorOnTheCpu(torch.nn.Module):
    """What these tests exist to catch: a tensor created without `device=`."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) + torch.zeros(x.shape[0], 3)


def test_a_tensor_left_on_the_cpu_fails_on_fake_cuda_and_on_meta():
    from fake_cuda import fake_cuda

    with fake_cuda() as cuda:
        model = LeavesATensorOnTheCpu().to(cuda)
        with pytest.raises(RuntimeError, match="cpu"):
            model(torch.randn(2, 3, device=cuda))
    with pytest.raises(RuntimeError, match="device cpu is not on the expected device meta"):
        LeavesATensorOnTheCpu().to(META)(torch.randn(2, 3, device=META))


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


# --- diffusion: the task's setup, a loss, every sampler and guidance, the held-out loss, on fake CUDA -------------


@pytest.fixture(scope="module")
def diffusion_on_cuda(untrained, shapes):
    """The diffusion task set up on a fake CUDA device (encoder, codec, network, EMA, generator), and that fake
    device, which each test enters again."""
    from fake_cuda import fake_cuda
    from training_diffusion import tiny_config

    from training.generative.diffusion.task import DiffusionTask

    cfg = tiny_config(untrained, data={"resolution": 8}, eval={"heldout": shapes["test"], "synthetic_test": False})
    task = DiffusionTask(cfg, shapes["pool"])
    fake = fake_cuda()
    with fake as cuda:
        model = task.setup(0, 1, cuda).to(cuda)  # as the engine: setup, then the module to the device
    return task, model, fake


def on(device: torch.device, *tensors: torch.Tensor) -> bool:
    return all(t.device.type == device.type for t in tensors)


def test_a_diffusion_training_loss_runs_on_the_device(diffusion_on_cuda):
    task, model, fake = diffusion_on_cuda
    with fake as cuda:
        diffusion_loss(task, model, cuda)


def diffusion_loss(task, model, cuda):
    assert on(cuda, *task.ema.module.parameters(), *task.conditioner.clip.parameters())
    # the conditioner's features come from its CPU cache, as `batches` yields them: the engine moves a batch
    tokens, pooled = (t.to(cuda) for t in task.conditioner(["a red circle", "a blue square"]))
    batch = {"x0": torch.randn(2, 3, 8, 8, device=cuda), "tokens": tokens, "pooled": pooled}
    out = task.loss(model, batch)
    assert on(cuda, out["loss"], task.bins.sums) and out["loss"].shape == ()


@pytest.mark.parametrize("method", ["euler", "heun", "ddim", "euler_maruyama"])
@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.5])
def test_every_sampler_with_and_without_guidance_runs_on_the_device(diffusion_on_cuda, method, guidance, monkeypatch):
    """Starting noise, churn and Euler-Maruyama noise (per-row CPU generators, moved), noise levels, the null
    caption and guidance's joined batch all on the device."""
    from fake_cuda import real_constants

    from training.generative.config import SamplerConfig
    from training.generative.diffusion import samplers

    task, _, fake = diffusion_on_cuda
    monkeypatch.setattr(samplers, "karras_sigmas", real_constants(samplers.karras_sigmas))  # read as floats
    churn = {"churn": 5.0} if method == "heun" else {}
    with fake as cuda:
        images, nfe = task.generator(["a red circle", "a blue square"], [0, 1],
                                     SamplerConfig(method=method, steps=3, guidance=guidance, **churn))
    assert on(cuda, images) and images.shape == (2, 3, 8, 8)
    assert nfe == (5 if method == "heun" else 3)


def test_the_held_out_loss_runs_on_the_device(diffusion_on_cuda, monkeypatch):
    from fake_cuda import real_constants

    from training.generative import evaluation

    task, _, fake = diffusion_on_cuda
    monkeypatch.setattr(evaluation, "read_heldout", real_constants(evaluation.read_heldout))  # decodes on the CPU
    with fake as cuda, pytest.raises(Exception, match="DataDependent|_local_scalar_dense"):  # float(loss) reads
        task.heldout_loss(n=4)
    x0, tokens, pooled = task._heldout  # what it put on the device before that read
    assert on(cuda, x0, tokens, pooled) and x0.shape == (4, 3, 8, 8)


@pytest.fixture(scope="module")
def diffusion_on_meta(untrained):
    """The diffusion task set up on `meta` (where backward passes run), and its config."""
    from training_diffusion import tiny_config

    from training.generative.diffusion.task import DiffusionTask

    cfg = tiny_config(untrained, data={"resolution": 8}, eval={"likelihood": {"samples": 2, "probes": 2}},
                      model={"zero_init": False})
    task = DiffusionTask(cfg, [])
    task.model = task.setup(0, 1, META).to(META)
    return task, cfg


def test_a_diffusion_training_step_runs_on_the_device(diffusion_on_meta):
    """The loss, its backward pass, the loss-per-time bins and the EMA update, on meta."""
    task, _ = diffusion_on_meta
    c = task.conditioner
    batch = {"x0": torch.randn(2, 3, 8, 8, device=META), "tokens": torch.randn(2, c.tokens, c.text_dim, device=META),
             "pooled": torch.randn(2, c.pooled_dim, device=META)}
    loss = task.loss(task.model, batch)["loss"]
    loss.backward()
    assert loss.device == META and task.bins.sums.device == META
    assert all(p.grad is not None and p.grad.device == META for p in task.model.parameters() if p.requires_grad)
    task.after_update(0)
    assert all(p.device == META for p in task.ema.module.parameters())


def test_a_diffusion_models_ode_density_runs_on_the_device(diffusion_on_meta, monkeypatch):
    """`winnow eval`'s and the stage's held-out bits/dim of a denoiser: the conditioner's features, the conditional
    null flags, the network, the divergence's backward passes and the probes on the model's device (meta: the
    divergence needs autograd). The conditioner's features come from its CPU cache, which a meta tensor cannot
    fill (the fake CUDA tests run the conditioner itself): CPU features of its shapes stand in."""
    import torchdiffeq

    monkeypatch.setattr(torchdiffeq, "odeint", strict_odeint)
    task, cfg = diffusion_on_meta
    c = task.conditioner
    monkeypatch.setattr(task.generator, "conditioner", lambda captions: (
        torch.randn(len(captions), c.tokens, c.text_dim), torch.randn(len(captions), c.pooled_dim)))
    density = task.generator.density(cfg.eval.likelihood)
    log_p = density(torch.randn(2, 3, 8, 8, device=META), ["a red circle", "a blue square"], torch.tensor([0, 5]))
    assert log_p.device == META and log_p.shape == (2,)


# --- flows: the task's setup, a training step, the inverse, held-out bits/dim ----------------------------------------


def flow_task(shapes, kind: str):
    from training_shapes import CLASSNAMES

    from training.generative.flows.config import FlowTaskConfig
    from training.generative.flows.task import FlowTask

    cfg = FlowTaskConfig.model_validate({  # test_flow_task's tiny flows, class-conditional, with an EMA
        "model": {"kind": kind, "levels": 2, "steps_per_level": 2, "hidden": 32, "conditioning": "class",
                  "classes": len(CLASSNAMES)},
        "resolution": 8, "batch_size": 32, "loader_workers": 0, "shuffle_buffer": 64, "ema_decay": 0.9,
        "init_samples": 64, "eval_samples": 8, "eval_batch_size": 4, "grid": 2})
    return FlowTask(cfg, shapes["pool"], [shapes["test"]], CLASSNAMES)


def pixel_batch(device, n: int = 4) -> dict:
    return {"pixels": torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, device=device),
            "cond": torch.randint(0, 12, (n,), device=device)}


@pytest.mark.parametrize("kind", ["nice", "realnvp", "glow"])
def test_a_flows_training_step_runs_on_the_device(shapes, kind):
    """Setup (Glow's actnorm initialised from data on the CPU, then moved), the loss's dequantisation noise and
    log-dets, the backward pass and the EMA update, on meta (the backward needs autograd)."""
    task = flow_task(shapes, kind)
    model = task.setup(0, 1, META).to(META)
    assert all(p.device == META for p in [*model.parameters(), *model.buffers(), *task.ema.parameters()])
    loss = task.loss(model, pixel_batch(META))["loss"]
    loss.backward()
    assert loss.device == META and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    task.after_update(0)


@pytest.mark.parametrize("kind", ["nice", "realnvp", "glow"])
def test_a_flows_inverse_and_held_out_bits_per_dim_run_on_the_device(shapes, kind, monkeypatch):
    """Sampling (per-seed CPU noise moved to the device, the class embedding, every layer's inverse) and held-out
    bits/dim (dequantised and preprocessed on the CPU in float64, scored on the device) on fake CUDA. The NaN check
    reads values, so it is skipped here (its own tests run on the CPU)."""
    from fake_cuda import fake_cuda, real_constants

    from training.generative import likelihood
    from training.generative.flows import task as flow_task_module
    from training.generative.flows.artifacts import sample_pixels

    monkeypatch.setattr(likelihood, "check_finite", lambda log_p, names=None: log_p)
    monkeypatch.setattr(flow_task_module, "first_images", real_constants(flow_task_module.first_images))
    task = flow_task(shapes, kind)
    with fake_cuda() as cuda:
        model = task.setup(0, 1, cuda).to(cuda)
        assert all(p.device.type == "cuda" for p in [*model.parameters(), *task.ema.parameters()])
        assert task.loss(model, pixel_batch(cuda))["loss"].device.type == "cuda"
        x = task.eval_net().sample([0, 1, 2, 3], task.grid_ids(4), 0.7)
        assert x.device.type == "cuda" and x.shape == (4, 3, 8, 8)
        pixels = sample_pixels(task.eval_net(), task.preprocess, [0, 1, 2, 3], task.grid_ids(4), 0.7)
        assert pixels.shape == (4, 3, 8, 8) and pixels.dtype == torch.uint8  # binned on the CPU, as documented
        monkeypatch.setattr(likelihood.BitsPerDim, "as_dict", lambda self: {"samples": len(self.per_sample)})
        assert task.evaluate()["likelihood"]["samples"] == task.cfg.eval_samples
