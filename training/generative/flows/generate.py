"""Sampling and scoring a trained flow the way every generator is evaluated: `images(prompts, seeds)` in [-1, 1]
(each image's base draw from its own seed, through the exact inverse) and the exact log-density of held-out images
given their captions (the caption -> class or hashed words the flow was trained with).

    gen = load_flow_generator("runs/demo/flow")
    images = gen.images(["a red circle", "a blue star"], seeds=[0, 1])     # (2, 3, 16, 16) in [-1, 1]
"""

from __future__ import annotations

import torch

from training.generative.flows.artifacts import load_flow, sample_pixels
from training.generative.flows.conditioning import caption_encoder
from training.generative.flows.multiscale import FlowModel
from training.generative.likelihood import Preprocess


class FlowGenerator:
    def __init__(self, net: FlowModel, preprocess: Preprocess, classnames: list[str] | None = None,
                 temperature: float = 0.7, device: torch.device | str = "cpu"):
        self.net, self.preprocess, self.temperature, self.device = net, preprocess, temperature, device
        self.encode = caption_encoder(net.cfg, classnames)
        self.conditional = net.cfg.conditioning != "none"
        self.method = "exact change of variables"

    def ids(self, captions: list[str]) -> torch.Tensor | None:
        return torch.stack([self.encode(c) for c in captions]).to(self.device) if self.conditional else None

    @torch.no_grad()
    def images(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] on the CPU, one integer seed per prompt: 8-bit images (the bins the inverse lands
        in), so they are what the flow models. Image i's draw comes from `torch.Generator().manual_seed(seeds[i])`
        on the CPU: the same (prompt, seed) is the same image in any batch, of any size, on any device."""
        if len(seeds) != len(prompts):
            raise ValueError(f"one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
        was_training = self.net.training
        self.net.eval()
        try:
            pixels = sample_pixels(self.net, self.preprocess, seeds, self.ids(prompts), self.temperature)
        finally:
            self.net.train(was_training)
        return pixels.float() / 127.5 - 1

    def __call__(self, x: torch.Tensor, captions: list[str], index: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | caption) (B,) in the flow's input space (preprocessing counted by the caller; exact, so the
        samples' `index` plays no part)."""
        return self.net(x, self.ids(captions))


def load_flow_generator(folder: str, temperature: float = 0.7, device: torch.device | str = "cpu") -> FlowGenerator:
    net, preprocess, meta = load_flow(folder, device)
    return FlowGenerator(net, preprocess, meta.get("classnames"), temperature, device)
