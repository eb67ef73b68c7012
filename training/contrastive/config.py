"""Typed configs of the contrastive encoder task (CLIP / SigLIP / CoCa / CatLIP), one model per component; the
steps, optimizer and scaling keys come from `training.engine.config.EngineConfig`. Pydantic only: importing this
never loads torch.

The smallest useful run (a tiny SigLIP for a few minutes on 2 cores):

    stages:
      train_encoder:
        kind: train-clip
        input: pool
        model: {name: tiny-sigmoid-vit}
        objective: siglip
        steps: 600
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from training.engine.config import EngineConfig

Objective = Literal["clip", "siglip", "coca", "catlip"]


class ModelConfig(StrictModel):
    """Which network, its starting weights, and the cost savers that change the model itself."""

    name: str = Field("tiny-sigmoid-vit", description="open_clip model name, or a configs/models/*.json stem")
    pretrained: str | None = Field(None, description="open_clip tag, hf-hub:..., or a local weights file")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto = bf16 on a CUDA device that supports it, else fp32")
    grad_checkpointing: bool = False
    lock_image: bool = Field(False, description="LiT: freeze the image tower")
    lock_image_unlocked_groups: int = Field(0, ge=0, description="LiT: top layer groups left trainable")
    patch_dropout: float = Field(0.0, ge=0, lt=1, description="FLIP: fraction of image patches dropped per step")
    unmasked_tuning_steps: int = Field(0, ge=0, description="FLIP: final steps trained without patch dropout")


class LossConfig(StrictModel):
    """Objective details; the objective itself is the trainer's one `objective:` key."""

    siglip_dist: Literal["bidir", "shift", "reduce", "gather"] = Field(
        "bidir", description="how SigLIP exchanges text features between workers (open_clip's dist_impl)")
    coca_caption_weight: float = Field(2.0, ge=0)
    coca_contrastive_weight: float = Field(1.0, ge=0)
    catlip_vocab_size: int = Field(1024, ge=2, description="CatLIP: most frequent caption words kept as labels")
    catlip_min_count: int = Field(2, ge=1, description="CatLIP: a word needs this many captions to be a label")
    catlip_vocab_samples: int = Field(50_000, ge=1, description="CatLIP: captions read to build the vocabulary")


class AugmentConfig(StrictModel):
    """The training images' augmentation: open_clip's `AugmentationCfg` (open_clip_train's `--aug-cfg`), its
    torchvision path. The default is open_clip's own, a RandomResizedCrop of 90-100% of the image; no flip, which
    would contradict captions that say left or right."""

    scale: tuple[float, float] = Field((0.9, 1.0), description="RandomResizedCrop: the crop's share of the image area")
    color_jitter: tuple[float, float, float, float] | None = Field(
        None, description="ColorJitter's brightness, contrast, saturation, hue")
    color_jitter_prob: float = Field(0.8, ge=0, le=1, description="share of images jittered when color_jitter is set")
    gray_scale_prob: float = Field(0.0, ge=0, le=1, description="share of images turned grey")

    @model_validator(mode="after")
    def _check_scale(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be 0 < low <= high <= 1, got {list(self.scale)}")
        return self

    def open_clip_cfg(self) -> dict:
        """The keyword arguments of open_clip's `aug_cfg`."""
        cfg = {"scale": self.scale}
        if self.color_jitter is not None:
            cfg.update(color_jitter=self.color_jitter, color_jitter_prob=self.color_jitter_prob)
        if self.gray_scale_prob:
            cfg["gray_scale_prob"] = self.gray_scale_prob
        return cfg


class DataConfig(StrictModel):
    input_shards: str | None = Field(
        None, description="glob or brace pattern of .tar shards; default: the input dataset's complete shards")
    batch_size: int = Field(64, ge=1, description="samples per worker per micro-batch")
    loader_workers: int = Field(1, ge=0, description="DataLoader processes per training worker")
    shuffle_buffer: int = Field(512, ge=0, description="samples shuffled in memory within each loader")
    seed: int = 0
    augment: AugmentConfig = AugmentConfig()


class ZeroShotConfig(StrictModel):
    """A labelled held-out set: a webdataset (`<key>.cls` labels + a classnames file) or an image folder."""

    shards: str | None = Field(None, description="glob/brace pattern of .tar shards with <key>.cls labels")
    image_folder: str | None = Field(None, description="torchvision ImageFolder root: one folder per class")
    classnames: str | None = Field(None, description='JSON {"classnames": [...], "templates": [...]}')
    templates: list[str] | None = Field(None, description="prompt templates; default: the classnames file's")

    @model_validator(mode="after")
    def _one_source(self) -> ZeroShotConfig:
        if (self.shards is None) == (self.image_folder is None):
            raise ValueError("give exactly one of `shards` and `image_folder`")
        if self.shards is not None and self.classnames is None:
            raise ValueError("`shards` needs a `classnames` file")
        return self


class RetrievalConfig(StrictModel):
    shards: str = Field(description="glob/brace pattern of held-out .tar shards with images and captions")


class EvalConfig(StrictModel):
    zeroshot: ZeroShotConfig | None = None
    retrieval: RetrievalConfig | None = None
    every_steps: int = Field(0, ge=0, description="evaluate during training every N steps (0 = at the end only)")
    max_samples: int | None = Field(2000, ge=1, description="cap on evaluated samples per set")
    batch_size: int = Field(256, ge=1)
    synthetic_test: bool = Field(True, description="with no sets given, use the synthetic web's held-out set")


class HoldoutConfig(StrictModel):
    """Hold back part of the training set and measure the model as a filter there, without ground truth
    (`filtering.holdout`): held-out clean pairs against the same pairs with captions shuffled across images (and
    junk images, for a DFN), and near misses (the caption with one word swapped for another held-out caption's
    word at the same place), which are always measured and, with `near_misses`, count in the estimate, the Platt
    fit and the best cut. The estimate is in the summary, train.json and the report; the checkpoint with the best
    estimate becomes model.pt.

        holdout: {fraction: 0.1, seed: 0, near_misses: true}   # CapFilt's filter: calibrated on near misses
        holdout: {fraction: 0.1, junk_images: true}             # a DFN filtering network
    """

    fraction: float = Field(0.1, gt=0, le=0.5, description="share of the training samples held out (by uid hash)")
    seed: int = Field(0, description="which samples: the split is a hash of (seed, uid)")
    max_pairs: int = Field(500, ge=2, description="held-out pairs evaluated (the first found, in shard order)")
    junk_images: bool = Field(False, description="add junk images (noise, flat, gradients) with real captions to "
                                                 "the negatives: what a DFN must reject")
    near_misses: bool = Field(False, description="count the near misses (one-word swaps) as negatives of the "
                                                 "estimate, the Platt fit (P(match)) and the best cut, as a caption "
                                                 "filter must reject a captioner's near misses; off: only reported "
                                                 "(auroc_near_miss)")
    every_steps: int = Field(100, ge=1, description="estimate every N steps (unless eval.every_steps is set)")
    choose_checkpoint: bool = Field(True, description="export the evaluated weights with the best estimate as "
                                                      "model.pt, not the last")
    warn_below: float = Field(0.85, gt=0.5, le=1, description="warn, with what to try, below this estimate")


class TrainConfig(EngineConfig):
    """Everything the contrastive task and the engine need besides where the shards are and where the run writes
    (the engine's keys: `steps`, `optim`, `scaling`, `log_every`, `checkpoint_every`, ...)."""

    model: ModelConfig = ModelConfig()
    objective: Objective = "siglip"
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    holdout: HoldoutConfig | None = Field(None, description="hold back part of the data to check the model as a "
                                                            "filter (the bootstraps' filters); null = train on all")

    @model_validator(mode="after")
    def _holdout_needs_text(self) -> TrainConfig:
        if self.holdout is not None and self.objective == "catlip":
            raise ValueError("holdout measures image-caption similarity; CatLIP has no text tower to score with")
        return self

