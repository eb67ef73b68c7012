"""Build the network a run trains: an open_clip model by name, plus our tiny configs and the cost savers.

`pipeline.core.model_configs.register_model_configs()` makes `configs/models/*.json` visible to open_clip, after
which `open_clip.create_model_and_transforms("tiny-sigmoid-vit", pretrained="<run>/model.pt")` loads our weights.
"""

from __future__ import annotations

import difflib
import math
import pickle
import warnings
from dataclasses import dataclass

import open_clip
import torch
from torch import nn

from pipeline.core.model_configs import random_init_expected, register_model_configs
from pipeline.core.paths import MODEL_CONFIGS_DIR
from pipeline.core.storage import local_if_url
from training.contrastive.config import ModelConfig
from training.engine.checkpoint import CheckpointError

SIGLIP_INIT = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}  # SigLIP paper: t' = ln 10, b = -10


class UnknownModelError(ValueError):
    """A model name that neither open_clip nor configs/models/ knows."""


def check_model_name(name: str) -> str:
    """Return `name` if open_clip can build it; else raise with the closest known names."""
    register_model_configs()
    if name.startswith(("hf-hub:", "local-dir:")) or name.replace("/", "-") in open_clip.list_models():
        return name
    known = open_clip.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.3)
    hint = f"closest known: {', '.join(close)}" if close else f"known include: {', '.join(known[:8])}, ..."
    raise UnknownModelError(
        f"unknown model {name!r}; {hint} (open_clip's built-in configs and {MODEL_CONFIGS_DIR}/*.json)")


class CatLIPModel(nn.Module):
    """CatLIP: the image tower plus a linear classifier over caption words; the text tower is kept (frozen) so
    the saved weights still load as the open_clip model they came from."""

    def __init__(self, clip: nn.Module, vocab_size: int, embed_dim: int):
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(embed_dim, vocab_size)
        for name, p in clip.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(False)  # not in the loop: DDP must not wait for their gradients

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None) -> dict:
        features = self.clip.encode_image(image)  # (B, D), unnormalised
        return {"image_features": features, "logits": self.head(features)}  # (B, V)


@dataclass
class BuiltModel:
    model: nn.Module  # what the loop trains (open_clip model, or CatLIPModel around one)
    clip: nn.Module  # the open_clip model inside, what model.pt holds
    preprocess_train: object
    preprocess_val: object
    tokenizer: object
    model_cfg: dict  # open_clip's architecture config, written next to the final weights
    extra_kwargs: dict  # what we passed beyond the named config (SigLIP's temperature and bias on a CLIP config)


def embed_dim(clip: nn.Module) -> int:
    with torch.no_grad():
        size = clip.visual.image_size
        size = size if isinstance(size, tuple) else (size, size)
        return clip.encode_image(torch.zeros(1, 3, *size)).shape[-1]


def build_model(cfg: ModelConfig, objective: str, vocab_size: int = 0, augment: dict | None = None) -> BuiltModel:
    """Create the model, transforms and tokenizer for a run; apply LiT, FLIP and checkpointing from `cfg`; `augment`
    is open_clip's `aug_cfg` for the training transform (`AugmentConfig.open_clip_cfg`)."""
    name, pretrained = cfg.name, cfg.pretrained
    if pretrained and pretrained.startswith(("hf-hub:", "local-dir:")):
        name, pretrained = pretrained, None  # open_clip takes hub and directory sources as the model name
    name = check_model_name(name)
    model_cfg = open_clip.get_model_config(name) or {}
    kwargs = {}
    if objective == "siglip" and model_cfg.get("init_logit_bias") is None:
        kwargs.update(SIGLIP_INIT)  # a softmax-CLIP architecture trained with the sigmoid loss
    try:
        # e.g. another stage's model.pt on s3://: open_clip reads files; without weights, a model trained from scratch
        with local_if_url(pretrained) as weights, random_init_expected(), warnings.catch_warnings():
            # open_clip warns of "unused" colour-jitter keys that its torchvision path does use
            warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
            clip, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                name, pretrained=weights, force_patch_dropout=cfg.patch_dropout or None, aug_cfg=augment, **kwargs)
    except pickle.UnpicklingError as err:  # open_clip loads with weights_only=True: say why it refused
        raise CheckpointError(f"{pretrained}: refusing to load pretrained weights that contain pickled Python "
                              f"objects, not only tensors ({err})") from None
    decoder = getattr(clip, "text_decoder", None)
    if decoder is not None and cfg.pretrained is None:
        # open_clip 3.3's CoCa leaves its decoder's text_projection as torch.empty (garbage memory; its own
        # init_parameters is never called and would fail): initialise it as that method means to
        nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    tokenizer = open_clip.get_tokenizer(name)
    model_cfg = {**model_cfg, **kwargs}
    model_cfg.get("vision_cfg", {}).pop("patch_dropout", None)  # a training-time setting, not architecture
    if cfg.lock_image:
        clip.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=True)
    if cfg.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    if hasattr(clip, "output_dict"):
        clip.output_dict = True
    model = clip
    if objective == "catlip":
        model = CatLIPModel(clip, vocab_size, embed_dim(clip))
    return BuiltModel(model, clip, preprocess_train, preprocess_val, tokenizer, model_cfg, kwargs)


def set_patch_dropout(clip: nn.Module, prob: float) -> None:
    """FLIP's unmasked tuning phase turns patch dropout off for the last steps."""
    pd = getattr(getattr(clip, "visual", None), "patch_dropout", None)
    if pd is not None and hasattr(pd, "prob"):
        pd.prob = prob


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on gains, biases, embeddings-as-scalars and the temperature/bias (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
