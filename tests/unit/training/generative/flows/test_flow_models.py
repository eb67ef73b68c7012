"""Whole models (NICE, RealNVP, Glow; unconditional, class- and text-conditional): the exact inverse, log p(x) equal
to the change of variables through autograd's full Jacobian, sampling as the inverse, and the caption encoders."""

from __future__ import annotations

import math

import pytest
import torch
from flow_jacobian import autograd_log_det, jiggle

from training.generative.flows.conditioning import CaptionToClass, CaptionToWords
from training.generative.flows.config import FlowModelConfig, FlowTaskConfig
from training.generative.flows.generate import FlowGenerator
from training.generative.flows.multiscale import FlowModel, standard_normal_log_prob
from training.generative.flows.task import FlowTask
from training.generative.likelihood import Preprocess

F64 = torch.float64
CLASSNAMES = ["red circle", "blue square", "green triangle"]
VARIANTS = [("nice", "none"), ("realnvp", "text"), ("glow", "class"), ("glow", "none")]


def model(kind: str, conditioning: str, resolution: int = 4) -> tuple[FlowModel, torch.Tensor | None]:
    torch.manual_seed(0)
    cfg = FlowModelConfig(kind=kind, levels=2, steps_per_level=2, hidden=8, conditioning=conditioning, classes=3,
                          cond_dim=4, text_buckets=20, text_words=3)
    net = FlowModel(cfg, 3, resolution).double()
    ids = {"none": None, "class": torch.tensor([0, 2]), "text": torch.tensor([[1, 5, 0], [7, 0, 0]])}[conditioning]
    if net.actnorms():
        net.initialize(torch.randn(16, 3, resolution, resolution, dtype=F64) * 0.5, None if ids is None else
                       ids.repeat(8, *[1] * (ids.ndim - 1)))
    return jiggle(net, 0.05), ids


@pytest.mark.parametrize(("kind", "conditioning"), VARIANTS)
def test_a_model_inverts_and_its_log_density_is_the_change_of_variables(kind, conditioning):
    net, ids = model(kind, conditioning)
    x = torch.randn(2, 3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    eps, log_det = net.encode(x, ids)
    assert eps.shape == (2, 48)
    assert (net.decode(eps, ids) - x).abs().max() < 1e-12
    rows = [autograd_log_det(lambda v, i=i: net.encode(v, None if ids is None else ids[i:i + 1])[0], x[i:i + 1])
            for i in range(2)]
    assert torch.allclose(log_det, torch.cat(rows), atol=1e-9)
    assert log_det.abs().min() > 0.1  # the priors (and couplings) scale: not a 0 == 0 comparison
    assert torch.allclose(net(x, ids), standard_normal_log_prob(eps) + torch.cat(rows), atol=1e-9)


@pytest.mark.parametrize(("kind", "conditioning"), VARIANTS)
def test_a_float32_model_inverts_to_float_tolerance_on_images(kind, conditioning):
    net, ids = model(kind, conditioning, resolution=8)
    net = net.float()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    eps, _ = net.encode(x, ids)
    assert (net.decode(eps, ids) - x).abs().max() < 1e-5


def test_sampling_is_the_exact_inverse_and_temperature_scales_the_draw():
    net, ids = model("glow", "class", resolution=8)
    x = net.sample([3, 4], ids, temperature=0.5)
    eps, _ = net.encode(x, ids)
    draw = torch.stack([torch.randn(192, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]).double() * 0.5
    assert (eps - draw).abs().max() < 1e-10  # image i's draw is its own seed's
    assert not torch.allclose(net.sample([3, 4], torch.tensor([1, 1]), 0.5), x)


def test_a_conditional_model_needs_its_ids_and_uses_them():
    net, ids = model("realnvp", "text")
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match="conditional"):
        net(x)
    assert (net(x, ids) - net(x, ids.flip(0))).abs().min() > 1e-4


def test_the_caption_encoders():
    to_class = CaptionToClass(["red circle", "blue square", "dark red circle"])
    assert int(to_class("a small red circle in the top left")) == 0
    assert int(to_class("a circle coloured red, at the top")) == 0  # words, not a phrase
    assert int(to_class("the dark red circle")) == 2  # the longest name wins
    assert int(to_class("free download")) == 3  # none of them: the extra index
    words = CaptionToWords(buckets=1000, length=4)
    ids = words("A red circle")
    assert ids.tolist()[3] == 0 and all(1 <= i <= 1000 for i in ids.tolist()[:3])
    assert torch.equal(words("a RED circle!"), ids)  # case and punctuation do not matter
    assert ids.tolist()[1] == 1 + 4200685455 % 1000  # crc32("red"): the same in every process


def test_configs_refuse_what_cannot_be_built():
    with pytest.raises(ValueError, match="divisible"):
        FlowTaskConfig(resolution=12, model={"levels": 3})
    with pytest.raises(ValueError, match="classes"):
        FlowModel(FlowModelConfig(conditioning="class"))
    task = FlowTask(FlowTaskConfig(model={"conditioning": "class"}), ["x.tar"], classnames=["a b", "c d", "e f"])
    assert task.cfg.model.classes == 3  # from the class names
    with pytest.raises(ValueError, match="class names"):
        FlowTask(FlowTaskConfig(model={"conditioning": "class", "classes": 4}), ["x.tar"], classnames=["a b"])
    assert FlowModelConfig(kind="realnvp").scale_kind() == "tanh"
    assert FlowModelConfig(kind="glow").scale_kind() == "sigmoid"
    assert math.isclose(FlowTaskConfig().logit_alpha, 0.05)


@pytest.mark.parametrize("conditioning", ["class", "text"])
def test_a_flows_prompt_and_seed_is_the_same_image_alone_or_in_a_batch(conditioning):
    """Image i's draw is its own seed's; the batched convolutions round alike here, so the 8-bit images match."""
    torch.manual_seed(0)
    cfg = FlowModelConfig(kind="glow", levels=2, steps_per_level=2, hidden=16, conditioning=conditioning,
                          classes=len(CLASSNAMES), cond_dim=4, text_buckets=20, text_words=4)
    net = FlowModel(cfg, 3, 8)
    ids = torch.arange(8) % len(CLASSNAMES) if conditioning == "class" else torch.randint(1, 21, (8, 4))
    net.initialize(torch.randn(8, 3, 8, 8) * 0.5, ids)
    gen = FlowGenerator(jiggle(net, 0.05), Preprocess(), CLASSNAMES, temperature=0.9)
    alone = gen.images(["a red circle"], [7])[0]
    batch = gen.images(["a blue square", "a red circle", "a green triangle"], [1, 7, 2])
    assert torch.equal(batch[1], alone)  # 8-bit images: equal
    assert not torch.equal(gen.images(["a red circle"], [8])[0], alone)
