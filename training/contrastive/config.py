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


class DataConfig(StrictModel):
    input_shards: str | None = Field(
        None, description="glob or brace pattern of .tar shards; default: the input dataset's complete shards")
    batch_size: int = Field(64, ge=1, description="samples per worker per micro-batch")
    loader_workers: int = Field(1, ge=0, description="DataLoader processes per training worker")
    shuffle_buffer: int = Field(512, ge=0, description="samples shuffled in memory within each loader")
    seed: int = 0


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


class TrainConfig(EngineConfig):
    """Everything the contrastive task and the engine need besides where the shards are and where the run writes
    (the engine's keys: `steps`, `optim`, `scaling`, `log_every`, `checkpoint_every`, ...)."""

    model: ModelConfig = ModelConfig()
    objective: Objective = "siglip"
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()

