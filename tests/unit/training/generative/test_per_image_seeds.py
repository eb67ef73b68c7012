"""One seed per image (`training.generative.seeds`): a (prompt, seed) pair is the same image alone or inside a batch
of other prompts and seeds, for every sampler with and without guidance (the flows': flows/test_flow_models.py).

Exactness: every random number of an image comes from its own seed, so with a network whose maths is the same row
by row whatever the batch (an elementwise denoiser below) images are equal bit for bit. Through the text tower and
the MMDiT they are close, not bit for bit: the CPU's matrix multiplies block the work by batch size, so a batch of 1
and a batch of 3 round differently (text features differ by ~1e-6, one network output by ~5e-7), and the sampler
carries that on. Measured on [-1, 1] images of this untrained network: < 1e-5 for most samplers, 1.8e-5 for Heun and
5.3e-5 for Heun with churn at guidance 3 (guidance multiplies the difference). The tolerance is 1e-4, 78 times below
an 8-bit step (2 / 255); a seed's own change is > 0.1."""

from __future__ import annotations

import pytest
import torch

from training.generative.config import SamplerConfig
from training.generative.diffusion.codec import PixelCodec
from training.generative.diffusion.config import DiffusionConfig, MMDiTConfig
from training.generative.diffusion.generate import Generator
from training.generative.diffusion.mmdit import TextToImageNet
from training.generative.diffusion.noise import make_family
from training.generative.diffusion.samplers import guided, sample
from training.generative.encoders import TextConditioner
from training.generative.seeds import image_generators, randn_rows

SAMPLERS = [{"method": "euler"}, {"method": "heun"}, {"method": "heun", "churn": 20.0}, {"method": "ddim"},
            {"method": "euler_maruyama"}, {"method": "euler", "churn": 20.0}]
NAMES = lambda s: "_".join(map(str, s.values()))  # noqa: E731


def rowwise(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A denoiser whose every row is computed alone (elementwise): batch-invariant to the last bit."""
    return (x + cond.view(-1, 1, 1, 1)) / (1 + sigma.view(-1, 1, 1, 1) ** 2)


def draw(seeds: list[int], conds: list[float], cfg: SamplerConfig) -> torch.Tensor:
    gens = image_generators(seeds)
    noise = randn_rows((3, 4, 4), gens)
    cond, uncond = torch.tensor(conds), torch.zeros(len(conds))
    return sample(guided(rowwise, cond, uncond, cfg.guidance), noise, cfg, make_family("edm"), gens)[0]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("settings", SAMPLERS, ids=NAMES)
def test_every_sampler_draws_an_images_noise_from_its_own_seed_only(settings, guidance):
    cfg = SamplerConfig(steps=4, guidance=guidance, **settings)
    alone = draw([7], [0.5], cfg)[0]
    assert torch.equal(draw([1, 7, 2], [0.1, 0.5, -0.3], cfg)[1], alone)
    assert torch.equal(draw([7, 3], [0.5, 0.9], cfg)[0], alone)
    assert not torch.equal(draw([8], [0.5], cfg)[0], alone)


@pytest.fixture(scope="module")
def generator(untrained) -> Generator:
    """An untrained MMDiT at 8 px without adaLN-Zero (its output is not 0, so the network shapes every step)."""
    torch.manual_seed(0)
    cond = TextConditioner(untrained)
    net = TextToImageNet(MMDiTConfig(layers=1, heads=2, head_dim=8, patch_size=2, zero_init=False), 8, 3,
                         cond.text_dim, cond.pooled_dim, cond.tokens)
    return Generator(net.eval(), cond, PixelCodec(8), DiffusionConfig(family="edm"), SamplerConfig(steps=3))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("settings", SAMPLERS, ids=NAMES)
def test_a_prompt_and_seed_is_the_same_image_alone_or_in_a_batch(generator, settings, guidance):
    cfg = SamplerConfig(steps=3, guidance=guidance, **settings)
    alone = generator(["a red circle"], [7], cfg)[0][0]
    batch = generator(["a blue square", "a red circle", "a green triangle"], [1, 7, 2], cfg)[0]
    # a batch of 3 runs other matmul blocking than a batch of 1; guidance amplifies that rounding to ~1e-4, a
    # twentieth of the 8-bit PNG's step (2/255 in [-1, 1]): the same image, not the same float bits
    assert torch.allclose(batch[1], alone, rtol=0, atol=5e-4), (batch[1] - alone).abs().max()
    other = generator(["a red circle"], [8], cfg)[0][0]
    assert (other - alone).abs().max() > 0.1  # the seed matters far beyond the tolerance


def test_one_seed_per_prompt_is_required(generator):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generator(["a red circle", "a blue square"], [0])

