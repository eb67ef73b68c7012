"""Typed configs of the diffusion maths and of the text-to-image task, each beside the name of the code it drives;
the steps, optimizer and scaling keys come from `training.engine.config.EngineConfig`. Pydantic only: importing this
never loads torch, so a pipeline config validates without it.

    TimeSamplerConfig  -> time_samplers.TimeSampler      SamplerConfig -> samplers.sample
    DiffusionConfig    -> loss.DiffusionLoss             MMDiTConfig   -> mmdit.TextToImageNet
    DiffusionTrainConfig -> task.DiffusionTask

The smallest useful run (a tiny MMDiT on a train-clip stage's text tower; its 500 steps of 64 take ~7 min on
one CPU core at 65-85 samples/s; 2 layers, batch 32, 300 steps give a coloured grid in ~2 min):

    stages:
      generator:
        kind: train-diffusion
        input: curated
        encoder_from: train          # a train-clip stage: its frozen text tower conditions the generator
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from pipeline.core.config import StrictModel
from training.contrastive.config import DataConfig
from training.engine.config import EngineConfig, OptimConfig
from training.generative.config import EncoderRef, GenerativeEvalConfig, SamplerConfig
from training.generative.flows.config import FlowModelConfig, FlowOptionsConfig

# Each family's own prediction and training density: rectified flow's velocity with SD3's logit-normal, DDPM's eps
# with uniform t, NCSN's eps with log-uniform sigma, EDM's preconditioned output with its log-normal sigma.
DEFAULT_PREDICTION = {"flow": "velocity", "vp": "eps", "ve": "eps", "edm": "edm"}
DEFAULT_TIME_SAMPLER = {"flow": {"kind": "logit_normal", "mean": 0.0, "std": 1.0}, "vp": {"kind": "uniform"},
                        "ve": {"kind": "log_uniform"}, "edm": {"kind": "log_normal", "mean": -1.2, "std": 1.2}}


class TimeSamplerConfig(StrictModel):
    kind: Literal["uniform", "log_uniform", "log_normal", "logit_normal", "mode", "cosmap"] = "logit_normal"
    mean: float = Field(0.0, description="log_normal / logit_normal: mean of ln sigma = logit(t)")
    std: float = Field(1.0, gt=0, description="log_normal / logit_normal: std of ln sigma = logit(t)")
    mode_scale: float = Field(1.29, ge=-1, le=1.75, description="mode: SD3's s (1.29); t is monotone in u for "
                                                                "-1 <= s <= 2 / (pi - 2)")
    shift: float = Field(1.0, gt=0, description="resolution shift k: sigma -> k sigma")

    @model_validator(mode="after")
    def _params_apply(self) -> TimeSamplerConfig:
        defaults = TimeSamplerConfig.model_fields
        if self.kind not in ("log_normal", "logit_normal"):
            for key in ("mean", "std"):
                if getattr(self, key) != defaults[key].default:
                    raise ValueError(f"{key} applies to log_normal and logit_normal, not {self.kind}")
        return self


class DiffusionConfig(StrictModel):
    """The objective: family, what the network predicts, the training noise density and the loss weight."""

    family: Literal["flow", "vp", "ve", "edm"] = "flow"
    prediction: Literal["eps", "x0", "v", "velocity", "edm"] | None = Field(
        None, description="default: the family's own (flow velocity, vp eps, ve eps, edm edm)")
    time_sampler: TimeSamplerConfig | None = Field(None, description="default: the family's own density")
    loss_weight: Literal["natural", "min_snr", "logit_normal"] = "natural"
    min_snr_gamma: float = Field(5.0, gt=0)
    sigma_data: float = Field(0.5, gt=0, description="EDM's sigma_data (data std; [-1, 1] images ~ 0.5)")

    @model_validator(mode="after")
    def _one_preference(self) -> DiffusionConfig:
        if self.loss_weight == "logit_normal":
            sampler = self.sampler_config()
            if self.family != "flow" or sampler.kind != "uniform":
                raise ValueError("loss_weight logit_normal reweights uniformly drawn flow times; with time_sampler "
                                 f"{sampler.kind} (family {self.family}) the same preference would apply twice: use "
                                 "time_sampler {kind: logit_normal} with loss_weight natural, or family flow with "
                                 "time_sampler {kind: uniform}")
        return self

    def family_obj(self):
        """The `noise.Family` (imports torch)."""
        from training.generative.diffusion.noise import make_family

        return make_family(self.family)

    def prediction_name(self) -> str:
        return self.prediction or DEFAULT_PREDICTION[self.family]

    def sampler_config(self) -> TimeSamplerConfig:
        return self.time_sampler or TimeSamplerConfig(**DEFAULT_TIME_SAMPLER[self.family])

    def describe(self) -> dict:
        """What a checkpoint records, so that sampling uses (or warns about) the same choices."""
        return {"family": self.family, "prediction": self.prediction_name(),
                "time_sampler": self.sampler_config().model_dump(), "loss_weight": self.loss_weight,
                "shift": self.sampler_config().shift, "sigma_data": self.sigma_data}


class MMDiTConfig(StrictModel):
    """A tiny MMDiT by default (2.3M parameters at 32 px, patch 4: 64 image tokens). The text widths default to the
    conditioning encoder's (its token width and embedding size); set them only to assert what that encoder is."""

    kind: Literal["mmdit"] = Field("mmdit", description="the generator family: mmdit (a denoiser of `diffusion`), or "
                                                        "a normalizing flow: nice, realnvp, glow")
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    head_dim: int = Field(32, ge=8)
    patch_size: int = Field(4, ge=1)
    qk_norm: Literal["rms_norm", "layer_norm"] | None = "rms_norm"
    zero_init: bool = Field(True, description="DiT's adaLN-Zero: modulation and output layers start at zero")
    text_dim: int | None = Field(None, ge=1, description="token feature width; default: the encoder's")
    pooled_dim: int | None = Field(None, ge=1, description="pooled embedding width; default: the encoder's")

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


class ImageDataConfig(DataConfig):
    """The shard loader's settings (the contrastive task's, one definition) and the generator's image size."""

    resolution: int = Field(32, ge=8, description="training images are resized (short side) and centre-cropped")


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


FLOW_KINDS = ("nice", "realnvp", "glow")


def _model_family(value: Any) -> str:
    """`model.kind` picks the config: a flow kind -> FlowModelConfig, anything else (or none) -> MMDiTConfig."""
    kind = value.get("kind", "mmdit") if isinstance(value, dict) else getattr(value, "kind", "mmdit")
    return "flow" if kind in FLOW_KINDS else "mmdit"


GeneratorModel = Annotated[Annotated[MMDiTConfig, Tag("mmdit")] | Annotated[FlowModelConfig, Tag("flow")],
                           Discriminator(_model_family)]


class DiffusionTrainConfig(EngineConfig):
    """Everything the diffusion task and the engine need besides the shards, the encoder and the run directory."""

    optim: DiffusionOptimConfig = DiffusionOptimConfig()
    steps: int = 500
    model: GeneratorModel = Field(MMDiTConfig(), description="kind mmdit: the denoiser; nice | realnvp | glow: a "
                                                             "normalizing flow (maximum likelihood, exact inverse)")
    diffusion: DiffusionConfig = DiffusionConfig()
    data: ImageDataConfig = ImageDataConfig()
    latent: LatentConfig = LatentConfig()
    conditioning: ConditioningConfig = ConditioningConfig()
    ema: EMAConfig = EMAConfig()
    flow: FlowOptionsConfig = FlowOptionsConfig()
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
        if self.is_flow:
            levels = self.model.levels
            if self.data.resolution % 2**levels:
                raise ValueError(f"model.kind {self.model.kind}: data.resolution {self.data.resolution} must be "
                                 f"divisible by 2^model.levels = {2**levels}")
            if self.latent.vae is not None:
                raise ValueError(f"model.kind {self.model.kind}: a flow models 8-bit pixels exactly; latent.vae "
                                 "applies to mmdit only")
        return self

    @property
    def is_flow(self) -> bool:
        return self.model.kind in FLOW_KINDS
