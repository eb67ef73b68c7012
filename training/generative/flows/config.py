"""Typed configs of the normalizing-flow generators (NICE, RealNVP, Glow) and their training task. Pydantic only:
importing this never loads torch.

A tiny Glow on 16x16 images, conditioned on the class named in each caption:

    model: {kind: glow, levels: 2, steps_per_level: 4, hidden: 64, conditioning: class}
    resolution: 16
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel

FlowKind = Literal["nice", "realnvp", "glow"]
# The default coupling scale of each family: RealNVP's tanh, Glow's sigmoid; NICE's couplings have none.
DEFAULT_SCALE = {"nice": None, "realnvp": "tanh", "glow": "sigmoid"}


class FlowModelConfig(StrictModel):
    """One multi-scale architecture for all three families; `kind` picks the step of flow at each level:
    nice = reverse + additive coupling, realnvp = reverse + affine coupling, glow = actnorm + 1x1 conv + affine."""

    kind: FlowKind = "glow"
    levels: int = Field(2, ge=1, description="squeeze + steps (+ split) per level; the image side halves each level")
    steps_per_level: int = Field(4, ge=1)
    hidden: int = Field(64, ge=1, description="channels of each coupling network's hidden layers")
    scale: Literal["sigmoid", "tanh"] | None = Field(
        None, description="affine coupling scale bound; default: glow sigmoid, realnvp tanh (ignored by nice)")
    conditioning: Literal["none", "class", "text"] = Field(
        "none", description="class: the class named in the caption (an extra index for none); text: hashed words")
    cond_dim: int = Field(32, ge=1, description="width of the conditioning vector")
    classes: int = Field(0, ge=0, description="class conditioning: how many classes (0 = from the classnames)")
    text_buckets: int = Field(2048, ge=1, description="text conditioning: hash buckets of caption words")
    text_words: int = Field(16, ge=1, description="text conditioning: caption words kept")

    def scale_kind(self) -> str | None:
        return self.scale if self.scale is not None and self.kind != "nice" else DEFAULT_SCALE[self.kind]


class FlowOptionsConfig(StrictModel):
    """A flow's settings in a train-diffusion stage (`flow:`) that the shared sections (data, eval) do not cover."""

    preprocess: Literal["signed_unit", "logit"] = Field(
        "signed_unit", description="dequantised pixels -> model input; its log-det is counted in bits/dim")
    logit_alpha: float = Field(0.05, gt=0, lt=0.5, description="logit preprocessing: squeeze into [a, 1 - a]")
    init_samples: int = Field(256, ge=2, description="images that initialise Glow's actnorm (once, before DDP)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of grids and evaluation samples")
    grid: int = Field(8, ge=1, description="the exported sample grid is grid x grid images")


class FlowTaskConfig(FlowOptionsConfig):
    """Maximum likelihood on uniformly dequantised 8-bit pixels; evaluation in bits/dim on held-out images. The
    flow's own settings (preprocess, logit_alpha, init_samples, temperature, grid) are the stage's `flow:` section."""

    model: FlowModelConfig = FlowModelConfig()
    resolution: int = Field(16, ge=2, description="images are resized to resolution x resolution")
    batch_size: int = Field(64, ge=1, description="samples per worker per micro-batch")
    loader_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(512, ge=0)
    ema_decay: float | None = Field(0.999, gt=0, lt=1, description="EMA of the weights for eval/export; None = off")
    ema_halflife_samples: float | None = Field(None, gt=0, description="instead of ema_decay: EDM's half-life in "
                                                                       "samples (the stage's `ema:` section)")
    ema_rampup: float | None = Field(0.1, gt=0, description="with ema_halflife_samples: half-life <= rampup x seen")
    eval_samples: int = Field(512, ge=1, description="held-out images scored in bits/dim")
    eval_batch_size: int = Field(128, ge=1)
    eval_seed: int = Field(0, description="seed of the held-out dequantisation noise")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = at the end only)")

    @model_validator(mode="after")
    def _resolution_fits_the_levels(self) -> FlowTaskConfig:
        if self.resolution % 2 ** self.model.levels:
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^levels = {2 ** self.model.levels}")
        return self
