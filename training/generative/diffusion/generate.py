"""Sampling a trained text-to-image denoiser: prompts -> frozen text features -> a sigma-space sampler -> pixels.

    gen = load_generator("runs/demo/generator", EncoderRef(name="tiny-clip-rn", weights="runs/demo/train/model.pt"))
    images, nfe = gen(["a red circle", "a blue star"], seeds=[0, 1])     # (2, 3, 32, 32) in [-1, 1]

Each image's random numbers (its starting noise, and the noise a stochastic sampler adds) come from its own seed, on
the CPU, so a prompt with a seed is the same picture whatever else is in the batch, whatever the batch size and device
RNG (`Generator.__call__`). A trained generator is `generator.safetensors` (its EMA weights) and `generator.json` (the
network, the image space, the objective as trained: family, prediction, time sampler, shift; and the sha256 of the text
encoder it was conditioned on: another encoder is refused).
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from pipeline.core.config import ConfigError
from pipeline.core.layout import join, read_json
from training.generative.diffusion.loss import DiffusionConfig
from training.generative.diffusion.precond import Denoiser
from training.generative.diffusion.samplers import SamplerConfig, guided, sample
from training.generative.encoders import EncoderRef, TextConditioner
from training.generative.seeds import image_generators, randn_rows

WEIGHTS, DESCRIPTION = "generator.safetensors", "generator.json"


class Generator:
    """A denoiser network F, its conditioning and its image space, sampled with any `SamplerConfig`."""

    def __init__(self, net: torch.nn.Module, conditioner: TextConditioner, codec, diffusion: DiffusionConfig,
                 sampler: SamplerConfig, device: torch.device | str = "cpu"):
        self.net, self.conditioner, self.codec, self.diffusion = net, conditioner, codec, diffusion
        self.sampler, self.device = sampler, device
        self.denoiser = Denoiser(net, diffusion.family_obj(), diffusion.prediction_name(), diffusion.sigma_data)
        self.trained_shift = diffusion.sampler_config().shift

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int],
                 sampler: SamplerConfig | None = None) -> tuple[torch.Tensor, int]:
        """(images (B, 3, H, W) in [-1, 1] on the generator's device, network evaluations per image) for B prompts
        and one integer seed per prompt. Image i's random numbers (its starting noise, then any churn or
        Euler-Maruyama noise) come from `torch.Generator().manual_seed(seeds[i])` on the CPU, moved to the device:
        a (prompt, seed) pair gives the same image whatever else is in the batch and whatever the batch size, with
        every sampler (see the tests for how exactly), and on any device's RNG. `sampler` overrides the generator's
        own sampler settings (method, steps, guidance, ...)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        cfg = sampler or self.sampler
        tokens, pooled = (t.to(self.device) for t in self.conditioner(prompts))
        n = len(prompts)
        cond = (tokens, pooled, torch.zeros(n, device=self.device))
        uncond = (tokens, pooled, torch.ones(n, device=self.device))  # the learned null caption
        gens = image_generators(seeds)
        noise = randn_rows((self.codec.channels, self.codec.size, self.codec.size), gens, device=self.device)
        was_training = self.net.training
        self.net.eval()
        try:
            x, nfe = sample(guided(self.denoiser, cond, uncond, cfg.guidance), noise, cfg, self.denoiser.family,
                            gens, self.trained_shift)
        finally:
            self.net.train(was_training)
        return self.codec.decode(x), nfe

    def images(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig | None = None) -> torch.Tensor:
        return self(prompts, seeds, sampler)[0]

    def density(self, cfg) -> OdeDensity | None:
        """log p(x | caption) of [-1, 1] pixels through the probability-flow ODE (`cfg` a LikelihoodConfig); None
        for a latent generator, whose autoencoder is not invertible: it has no exact likelihood of pixels."""
        return OdeDensity(self, cfg) if self.codec.__class__.__name__ == "PixelCodec" else None


class OdeDensity:
    """A pixel-space generator's log-density of [-1, 1] images given captions (no guidance: the conditional model),
    by `likelihood.OdeLikelihood` from `cfg.sigma_min` to `cfg.sigma_max` (default: the family's)."""

    def __init__(self, gen: Generator, cfg):
        from training.generative.likelihood import Preprocess

        self.gen, self.cfg, self.preprocess = gen, cfg, Preprocess("signed_unit")
        self.sigma_max = cfg.sigma_max or gen.denoiser.family.sigma_max
        self.method = cfg.describe().replace("the family max", f"{self.sigma_max:g}")

    def __call__(self, x: torch.Tensor, captions: list[str], index: torch.Tensor | None = None) -> torch.Tensor:
        from training.generative.likelihood import OdeLikelihood

        gen = self.gen
        tokens, pooled = (t.to(gen.device) for t in gen.conditioner(captions))
        cond = (tokens, pooled, torch.zeros(len(captions), device=gen.device))
        was_training = gen.net.training
        gen.net.eval()
        try:
            ode = OdeLikelihood(lambda z, s: gen.denoiser(z, s, cond), self.sigma_max, gen.diffusion.sigma_data,
                                self.cfg)
            return ode(x, index)
        finally:
            gen.net.train(was_training)


def describe(cfg, encoder: dict) -> dict:
    """generator.json: what a generator of this config needs to be rebuilt and sampled as trained (`cfg` a
    DiffusionTrainConfig, `encoder` the conditioning record: name, weights, source, sha256 and text widths)."""
    from training.generative.diffusion.codec import image_space

    return {"model": cfg.model.model_dump(), "resolution": cfg.data.resolution,
            "image": image_space(cfg.latent.vae, cfg.data.resolution), "diffusion": cfg.diffusion.describe(),
            "diffusion_config": cfg.diffusion.model_dump(mode="json"),
            "sampler": cfg.sample.sampler.model_dump(mode="json"), "encoder": encoder}


def check_encoder(recorded: dict, sha256: str, encoder: EncoderRef, where: str) -> None:
    """A generator conditioned on one text encoder is refused with another (the features would mean nothing)."""
    if recorded.get("sha256") != sha256:
        raise ConfigError(
            f"{where}: the generator was conditioned on the encoder {recorded.get('source') or ''} "
            f"{recorded.get('name')!r} ({recorded.get('weights')}, sha256 {str(recorded.get('sha256'))[:12]}), but "
            f"this config gives {encoder.describe()} (sha256 {sha256[:12]}): condition on the same encoder or "
            "train a new generator")


def load_generator(model_dir: str, encoder: EncoderRef, device: torch.device | str = "cpu",
                   where: str = "generator") -> Generator:
    """The trained generator in `model_dir` (its EMA weights), conditioned on `encoder` (which must be the one it
    was trained with)."""
    from training.engine.checkpoint import load_weights
    from training.generative.diffusion.codec import make_codec
    from training.generative.diffusion.mmdit import MMDiTConfig, TextToImageNet

    info = read_json(join(model_dir, DESCRIPTION))
    conditioner = TextConditioner(encoder, device, user=where)
    check_encoder(info["encoder"], conditioner.sha256, encoder, where)
    image, enc = info["image"], info["encoder"]
    codec = make_codec(image.get("vae"), info["resolution"], device)
    net = TextToImageNet(MMDiTConfig(**info["model"]), image["size"], image["channels"], enc["text_dim"],
                         enc["pooled_dim"], enc["tokens"])
    net.load_state_dict(load_weights(join(model_dir, WEIGHTS)))
    return Generator(net.to(device).eval(), conditioner, codec, DiffusionConfig(**info["diffusion_config"]),
                     SamplerConfig(**info["sampler"]), device)


def save_grid(images: torch.Tensor, prompts: list[str], path: str, scale: int = 3, label_width: int = 170) -> None:
    """A PNG grid: one row per prompt (its images side by side, upscaled `scale` x), the prompt on the left."""
    from pipeline.core.layout import atomic_write
    from training.generative.diffusion.codec import to_pil

    tiles = to_pil(images)
    cols = len(tiles) // len(prompts)
    side = tiles[0].width * scale
    grid = Image.new("RGB", (label_width + cols * (side + 2), len(prompts) * (side + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, prompt in enumerate(prompts):
        draw.text((4, r * (side + 2) + side // 2 - 6), prompt[:28], fill=(20, 20, 20))
        for c in range(cols):
            tile = tiles[r * cols + c].resize((side, side), Image.NEAREST)
            grid.paste(tile, (label_width + c * (side + 2), r * (side + 2)))
    with atomic_write(path, "wb") as f:
        grid.save(f, format="PNG")
