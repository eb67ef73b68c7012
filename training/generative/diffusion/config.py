"""Typed config of the text-to-image diffusion task; the steps, optimizer and scaling keys come from
`training.engine.config.EngineConfig`. Pydantic only: importing this never loads torch.

The smallest useful run (a tiny MMDiT on a train-clip stage's text tower, ~3 min on 2 cores):

    stages:
      generator:
        kind: train-diffusion
        input: curated
        encoder_from: train          # a train-clip stage: its frozen text tower conditions the generator
        steps: 500
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from training.engine.config import EngineConfig, OptimConfig
from training.generative.diffusion.loss import DiffusionConfig
from training.generative.diffusion.mmdit import MMDiTConfig
from training.generative.diffusion.samplers import SamplerConfig
from training.generative.encoders import EncoderRef
from training.generative.evaluation import GenerativeEvalConfig


class ImageDataConfig(StrictModel):
    input_shards: str | None = Field(
        None, description="glob or brace pattern of .tar shards; default: the input dataset's complete shards")
    resolution: int = Field(32, ge=8, description="training images are resized (short side) and centre-cropped")
    batch_size: int = Field(64, ge=1, description="samples per worker per micro-batch")
    loader_workers: int = Field(1, ge=0, description="DataLoader processes per training worker")
    shuffle_buffer: int = Field(512, ge=0)
    seed: int = 0


class LatentConfig(StrictModel):
    vae: str | None = Field(None, description="local folder of a diffusers AutoencoderKL (config.json + weights); "
                                              "null = pixel space")
    channels: int = Field(16, ge=1, description="latent channels the generator is built for (SD3's 16); the "
                                                "autoencoder's latent_channels must match")


class ConditioningConfig(StrictModel):
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="captions replaced by the learned null embedding "
                                                                 "(classifier-free guidance needs them)")
    cache_size: int = Field(100_000, ge=0, description="captions whose features each worker keeps in memory")


class EMAConfig(StrictModel):
    """EDM's EMA: a half-life in samples, ramped up to a fraction of the samples seen (short runs stay current)."""

    halflife_samples: float = Field(20_000, gt=0)
    rampup: float | None = Field(0.1, gt=0, description="half-life <= rampup x samples seen; null = no ramp-up")


class SampleConfig(StrictModel):
    """The sampler used for grids and evaluation, and the sample grid written during training."""

    sampler: SamplerConfig = SamplerConfig(method="heun", steps=18, guidance=3.0)
    grid_every: int = Field(0, ge=0, description="write a sample grid every N steps (0 = at the end only)")
    prompts: list[str] | None = Field(None, description="grid rows; default: class prompts of the held-out set")
    grid_prompts: int = Field(8, ge=1, description="rows of the default grid")
    seeds_per_prompt: int = Field(4, ge=1, description="grid columns: one fixed noise seed each")


class DiffusionOptimConfig(OptimConfig):
    """AdamW as the engine's, with a generator's defaults: no weight decay (EDM, DiT), beta2 0.99."""

    lr: float = Field(1e-3, gt=0, description="peak learning rate (tiny MMDiTs on 2 cores: see the stage docs)")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    beta2: float = 0.99


class DiffusionTrainConfig(EngineConfig):
    """Everything the diffusion task and the engine need besides the shards, the encoder and the run directory."""

    optim: DiffusionOptimConfig = DiffusionOptimConfig()
    steps: int = 500
    model: MMDiTConfig = MMDiTConfig()  # the generator family: one kind now (flows add theirs)
    diffusion: DiffusionConfig = DiffusionConfig()
    data: ImageDataConfig = ImageDataConfig()
    latent: LatentConfig = LatentConfig()
    conditioning: ConditioningConfig = ConditioningConfig()
    ema: EMAConfig = EMAConfig()
    sample: SampleConfig = SampleConfig()
    eval: GenerativeEvalConfig = GenerativeEvalConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto = bf16 on a CUDA device that supports it, else fp32")
    encoder: EncoderRef | None = Field(None, description="the conditioning text tower (a stage sets it from "
                                                         "encoder_from)")

    @model_validator(mode="after")
    def _grid(self) -> DiffusionTrainConfig:
        if self.sample.grid_every and self.sample.grid_every > self.steps:
            raise ValueError(f"sample.grid_every ({self.sample.grid_every}) is more than steps ({self.steps})")
        return self
