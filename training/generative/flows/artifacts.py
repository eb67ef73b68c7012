"""A trained flow's files and what they are for: weights + a JSON of how to rebuild it (`flow.safetensors`,
`flow.json`), pixel samples by the exact inverse, and a PNG grid of them."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from training.generative.flows.config import FlowModelConfig
from training.generative.flows.multiscale import FlowModel
from training.generative.likelihood import Preprocess

WEIGHTS, META = "flow.safetensors", "flow.json"


def save_flow(folder: str, net: FlowModel, preprocess: Preprocess, classnames: list[str] | None = None) -> str:
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, os.path.join(folder, WEIGHTS))
    meta = {"model": net.cfg.model_dump(), "channels": net.shape[0], "resolution": net.shape[1],
            "preprocess": preprocess.name, "logit_alpha": preprocess.alpha, "classnames": classnames}
    with open(os.path.join(folder, META), "w") as f:
        json.dump(meta, f, indent=1)
    return os.path.join(folder, WEIGHTS)


def load_flow(folder: str, device: torch.device | str = "cpu") -> tuple[FlowModel, Preprocess, dict]:
    """(the flow in eval mode, its preprocessing, the rest of flow.json) from a folder `save_flow` wrote."""
    with open(os.path.join(folder, META)) as f:
        meta = json.load(f)
    net = FlowModel(FlowModelConfig.model_validate(meta["model"]), meta["channels"], meta["resolution"])
    net.load_state_dict(load_file(os.path.join(folder, WEIGHTS)))  # actnorm's `initialised` flags come with it
    return net.to(device).eval(), Preprocess(meta["preprocess"], meta["logit_alpha"]), meta


@torch.no_grad()
def sample_pixels(net: FlowModel, preprocess: Preprocess, seeds: list[int], ids: torch.Tensor | None = None,
                  temperature: float = 1.0) -> torch.Tensor:
    """One uint8 image (B, C, H, W) per seed: its standard normal draw times `temperature`, through the exact
    inverse, then the bin each value falls in (on the CPU)."""
    return preprocess.to_pixels(net.sample(seeds, ids, temperature).float().cpu())


def image_grid(pixels: torch.Tensor, columns: int, scale: int = 1) -> Image.Image:
    """uint8 (N, 3, H, W) -> one image, `columns` wide, each image scaled up `scale` times (nearest)."""
    n, _, h, w = pixels.shape
    rows = -(-n // columns)
    canvas = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid
