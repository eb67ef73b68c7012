"""Typed configs shared by the generators (pydantic only: importing this never loads torch): the frozen encoders a
generator is conditioned on or judged by, the sampler, and what its evaluation compares against.

    EncoderRef            -> encoders.load_encoder / TextConditioner
    SamplerConfig         -> diffusion.samplers.sample
    LikelihoodConfig      -> likelihood.OdeLikelihood, evaluation.likelihood (held-out bits/dim)
    GenerativeEvalConfig  -> evaluation.evaluate_generator
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from pipeline.core.model_files import LOCAL_DIR, local_dir


class EncoderRef(StrictModel):
    """An open_clip model and its weights file, or an open_clip folder (`local-dir:/path`, its weights inside);
    `source` says which config produced it (for error messages)."""

    name: str = Field(description="open_clip model name or a configs/models/*.json stem; or local-dir:/path, a folder "
                                  "holding open_clip_config.json and its weights (as open_clip writes them)")
    weights: str | None = Field(None, description="a model.pt written by a train-clip stage (any fsspec path); none "
                                                  "for a local-dir: name")
    source: str = Field("", description="where this encoder comes from, e.g. 'stages.train (train-clip)'")

    @model_validator(mode="after")
    def _weights(self) -> EncoderRef:
        if self.weights is None and local_dir(self.name) is None:
            raise ValueError(f"encoder {self.name!r}: give `weights` (e.g. a train-clip stage's model.pt), or name an "
                             f"open_clip folder as `name: {LOCAL_DIR}/path`")
        return self

    @property
    def files(self) -> str:
        """What holds the weights: the weights file, or the local-dir folder."""
        return self.weights or local_dir(self.name)

    def describe(self) -> str:
        return f"{self.source + ': ' if self.source else ''}open_clip {self.name!r}" + \
            (f" with {self.weights}" if self.weights else "")


class SamplerConfig(StrictModel):
    method: Literal["euler", "heun", "ddim", "euler_maruyama"] = "heun"
    steps: int = Field(18, ge=1, description="noise levels visited (heun: 2 * steps - 1 evaluations)")
    rho: float = Field(7.0, gt=0, description="EDM's schedule exponent")
    sigma_min: float | None = Field(None, gt=0, description="default: the family's")
    sigma_max: float | None = Field(None, gt=0, description="default: the family's (80 for EDM)")
    churn: float = Field(0.0, ge=0, description="EDM's S_churn (heun, euler): noise added back per step")
    churn_tmin: float = Field(0.0, ge=0)
    churn_tmax: float = Field(float("inf"), ge=0)
    churn_noise: float = Field(1.0, gt=0, description="EDM's S_noise")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale w: 0 unconditional, 1 none")
    shift: float | None = Field(None, gt=0, description="noise-level shift k; default: the one trained with")


class LikelihoodConfig(StrictModel):
    """Held-out bits/dim: how many images, the seed of their dequantisation noise (and of Hutchinson's probes), and
    the probability-flow ODE of the diffusion families (flows need none of it: their likelihood is exact)."""

    samples: int = Field(16, ge=0, description="held-out images scored, the first in file order (0 = off); a denoiser"
                                               " solves an ODE per image")
    batch_size: int = Field(16, ge=1)
    trace: str = Field("hutchinson", pattern="^(hutchinson|exact)$",
                       description="exact: one backward pass per dimension (small inputs); hutchinson: probes")
    probes: int = Field(1, ge=1, description="Hutchinson probes per sample (their mean is the estimate)")
    seed: int = Field(0, description="seed of the dequantisation noise and the probes")
    rtol: float = Field(1e-5, gt=0, description="dopri5's relative tolerance")
    atol: float = Field(1e-5, gt=0, description="dopri5's absolute tolerance")
    sigma_min: float = Field(1e-3, gt=0, description="where the ODE starts: well below an 8-bit bin (2 / 256)")
    sigma_max: float | None = Field(None, gt=0, description="where it ends; default: the family's")

    def describe(self) -> str:
        trace = "exact trace" if self.trace == "exact" else f"Hutchinson, {self.probes} Rademacher probe(s)"
        return (f"probability-flow ODE, sigma {self.sigma_min:g} -> {self.sigma_max or 'the family max'}, {trace}, "
                f"dopri5 rtol {self.rtol:g} atol {self.atol:g}, seed {self.seed}")


class GenerativeEvalConfig(StrictModel):
    heldout: str | None = Field(None, description="held-out real shards (glob/brace): Frechet reference, prompts; "
                                                  "default: the synthetic web's test set")
    classnames: str | None = Field(None, description='classnames.json of "<colour> <shape>" classes (attribute '
                                                     "accuracy); default: the synthetic test set's")
    judge: EncoderRef | None = Field(None, description="the image-text encoder that judges samples")
    judge_from: str | None = Field(None, description="a train-clip stage whose encoder is the judge; default: a "
                                                     "train-clip stage other than the conditioning one")
    features: EncoderRef | None = Field(None, description="the image encoder of the Frechet distance; default: judge")
    features_from: str | None = Field(None, description="a train-clip stage whose encoder gives Frechet features")
    frechet_samples: int = Field(256, ge=4, description="generated (and real) images of the Frechet distance")
    attribute_seeds: int = Field(2, ge=1, description="images per class prompt")
    prompt: str = Field("a {}", description="the class prompt; {} is the class name")
    batch_size: int = Field(64, ge=1)
    sampler: SamplerConfig | None = Field(None, description="default: sample.sampler")
    synthetic_test: bool = Field(True, description="with no held-out set given, use the synthetic web's")
    likelihood: LikelihoodConfig = LikelihoodConfig()

    @model_validator(mode="after")
    def _one_source(self) -> GenerativeEvalConfig:
        for key in ("judge", "features"):
            if getattr(self, key) is not None and getattr(self, f"{key}_from") is not None:
                raise ValueError(f"give `{key}` or `{key}_from`, not both")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the sample metrics (Frechet distance, attributes, alignment) can run."""
        return self.heldout is not None and (self.judge is not None or self.features is not None)

    @property
    def anything(self) -> bool:
        """Whether any metric can run: the sample metrics, or held-out bits/dim (needs only the held-out set)."""
        return self.enabled or (self.heldout is not None and self.likelihood.samples > 0)
