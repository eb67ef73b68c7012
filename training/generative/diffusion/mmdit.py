"""The generator network: diffusers' MMDiT (`SD3Transformer2DModel`: joint text-image attention, 2-D sin-cos
position embeddings, adaLN-Zero modulation from the noise level and the pooled text embedding) with QK RMS-norm,
plus the learned null conditioning that caption dropout trains and classifier-free guidance samples with.

    F(x_in (B, C, H, W), timestep (B,) in 0..1000, cond) -> (B, C, H, W)
    cond = (tokens (B, T, D_text), pooled (B, D_pool), null (B,))   null = 1 where the caption is dropped

A dropped caption is replaced by the null tokens and null pooled vector inside `forward`, so the swap happens
where DDP sees it and the null embedding gets its gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from training.generative.diffusion.config import MMDiTConfig


class TextToImageNet(nn.Module):
    """MMDiT with a learned null caption; `forward(x_in, timestep, cond)` is the F that `Denoiser` wraps."""

    def __init__(self, cfg: MMDiTConfig, image_size: int, channels: int, text_dim: int, pooled_dim: int,
                 text_tokens: int):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        if image_size % cfg.patch_size:
            raise ValueError(f"model.patch_size {cfg.patch_size} does not divide the image size {image_size}")
        self.transformer = SD3Transformer2DModel(
            sample_size=image_size, patch_size=cfg.patch_size, in_channels=channels, out_channels=channels,
            num_layers=cfg.layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
            joint_attention_dim=text_dim, caption_projection_dim=cfg.width, pooled_projection_dim=pooled_dim,
            pos_embed_max_size=image_size // cfg.patch_size, qk_norm=cfg.qk_norm)
        if cfg.zero_init:
            adaln_zero(self.transformer)
        # small, not zero: a zero null caption would be a point the encoder never produces, but zero gradients
        # through adaLN would not move it either
        self.null_tokens = nn.Parameter(0.02 * torch.randn(text_tokens, text_dim))
        self.null_pooled = nn.Parameter(0.02 * torch.randn(pooled_dim))

    def forward(self, x_in: torch.Tensor, timestep: torch.Tensor, cond: tuple) -> torch.Tensor:
        tokens, pooled, null = cond
        drop = null.to(tokens.dtype).view(-1, 1, 1)  # (B, 1, 1)
        tokens = (1 - drop) * tokens + drop * self.null_tokens.to(tokens.dtype)  # (B, T, D_text)
        pooled = (1 - drop[:, 0]) * pooled + drop[:, 0] * self.null_pooled.to(pooled.dtype)  # (B, D_pool)
        return self.transformer(hidden_states=x_in, encoder_hidden_states=tokens, pooled_projections=pooled,
                                timestep=timestep, return_dict=False)[0]


def adaln_zero(transformer: nn.Module) -> None:
    """DiT's adaLN-Zero initialisation (Peebles & Xie 2023): every block's modulation and the output layer start at
    zero, so each block starts as the identity and the network's first output is 0. diffusers leaves them at
    PyTorch's default init; on tiny models zero-init learns faster (see the stage docs for the measurement)."""
    for name, module in transformer.named_modules():
        modulation = name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear"))
        if isinstance(module, nn.Linear) and (modulation or name == "proj_out"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
