"""The four training objectives, each a small module `forward(out, batch) -> {"loss": ..., parts...}`.

clip    softmax InfoNCE, open_clip's ClipLoss with local loss + gather with grad (each worker holds B x global_B)
siglip  sigmoid loss, open_clip's SigLipLoss: text features travel between neighbours, no worker holds the
        global logit matrix; learnable temperature and bias
coca    contrastive + captioning (open_clip's CoCaLoss)
catlip  CatLIP: multi-label BCE of the image tower's word logits against the caption's words
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss
from torch import nn

from training.contrastive.config import LossConfig


class ClipObjective(nn.Module):
    def __init__(self, rank: int, world: int):
        super().__init__()
        self.loss = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)

    def forward(self, out: dict, batch: dict) -> dict:
        loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
        return {"loss": loss}


class SigLipObjective(nn.Module):
    def __init__(self, rank: int, world: int, dist_impl: str):
        super().__init__()
        self.loss = SigLipLoss(rank=rank, world_size=world, dist_impl=dist_impl)

    def forward(self, out: dict, batch: dict) -> dict:
        # SigLipLoss sums over this worker's images x all texts and divides by the local batch; the mean over
        # workers (DDP averages gradients) is therefore the single-worker loss of the global batch.
        loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        return {"loss": loss}


class CocaObjective(nn.Module):
    def __init__(self, rank: int, world: int, cfg: LossConfig):
        super().__init__()
        self.loss = CoCaLoss(
            caption_loss_weight=cfg.coca_caption_weight, clip_loss_weight=cfg.coca_contrastive_weight,
            local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)

    def forward(self, out: dict, batch: dict) -> dict:
        # out["logits"]: (B, T-1, vocab) teacher-forced next-token logits; out["labels"]: (B, T-1)
        parts = self.loss(out["image_features"], out["text_features"], out["logits"], out["labels"],
                          out["logit_scale"], output_dict=True)
        return {"loss": parts["contrastive_loss"] + parts["caption_loss"], **parts}


class CatlipObjective(nn.Module):
    def forward(self, out: dict, batch: dict) -> dict:
        logits, target = out["logits"], batch["text"]  # (B, V) word logits, (B, V) multi-hot caption words
        return {"loss": F.binary_cross_entropy_with_logits(logits.float(), target.float())}


def make_objective(objective: str, cfg: LossConfig, rank: int = 0, world: int = 1) -> nn.Module:
    if objective == "clip":
        return ClipObjective(rank, world)
    if objective == "siglip":
        return SigLipObjective(rank, world, cfg.siglip_dist)
    if objective == "coca":
        return CocaObjective(rank, world, cfg)
    if objective == "catlip":
        return CatlipObjective()
    raise ValueError(f"unknown objective {objective!r}")


def temperature_and_bias(clip: nn.Module) -> dict:
    """The learnable logit scale (as a temperature-like scale, exp(t')) and bias, for the logs."""
    out = {}
    with torch.no_grad():
        if getattr(clip, "logit_scale", None) is not None:
            out["logit_scale"] = float(clip.logit_scale.exp())
        if getattr(clip, "logit_bias", None) is not None:
            out["logit_bias"] = float(clip.logit_bias)
    return out
