"""A task the engine has never seen, in this one file: regress an image's mean colour (R, G, B in [0, 1]) with a
tiny conv net, on the shapes shards (`training_shapes`).

Like the diffusion task it keeps an exponential moving average of its weights: updated after every
optimizer step, saved in each step checkpoint (`extra_state`), restored on resume, and the weights that evaluation
and the exported file use. Nothing in `training/` knows this task exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from pipeline.core.images import UndecodableImage, open_rgb
from pipeline.core.layout import join
from pipeline.core.sample import image_member
from training.data import ErrorCounter, tar_samples
from training.engine.run_dir import RunDir
from training.engine.task import Task


def load_images(urls: list[str]) -> torch.Tensor:
    """Every decodable image of the shards, in file order, as one float tensor (N, 3, H, W) in [0, 1]. Read as every
    task reads: the one capped tar reader (`training.data.tar_samples`, refused members and damaged shards counted)
    and the one image decoder (`open_rgb`: accepted formats, pixel cap); an image that does not decode is passed
    over."""
    images = []
    for sample in tar_samples(urls, ErrorCounter()):
        try:
            rgb = open_rgb(image_member(sample)[1])
        except UndecodableImage:
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(images)


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3))  # (N, 3)


class MeanColourTask(Task):
    name = "train-mean-colour"
    precision = "fp32"

    def __init__(self, shards: list[str], heldout: str, batch_size: int = 16, ema_decay: float = 0.8,
                 eval_every: int = 0):
        self.shards, self.heldout = list(shards), heldout
        self.batch_size, self.ema_decay, self.eval_every = batch_size, ema_decay, eval_every
        self.updates = 0  # optimizer steps taken by this process (tests read it in-process)

    def setup(self, rank: int, world: int, device: torch.device) -> nn.Module:
        self.device = device
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),  # (B, 16, 20, 20)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))  # (B, 3)
        self.ema = {k: v.detach().clone().to(device) for k, v in self.net.state_dict().items()}
        return self.net

    def batches(self, rank: int, world: int, seed: int) -> Iterator[dict]:
        images = load_images(self.shards)
        g = torch.Generator().manual_seed(seed)  # the same order on every rank; each takes its slice
        while True:
            order = torch.randperm(len(images), generator=g)[rank::world]
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
                x = images[order[i:i + self.batch_size]]
                yield {"image": x - 0.5, "target": mean_colour(x)}  # (B, 3, 40, 40) centred, (B, 3)

    def loss(self, model: nn.Module, batch: dict) -> dict:
        return {"loss": nn.functional.mse_loss(model(batch["image"]), batch["target"])}

    def after_update(self, step: int) -> None:
        self.updates += 1
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                self.ema[k].lerp_(v, 1 - self.ema_decay)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v for k, v in self.ema.items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ema = {k.removeprefix("ema."): v.to(self.device) for k, v in tensors.items()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        images = load_images([self.heldout]).to(self.device)
        predicted = functional_call(self.net, self.ema, (images - 0.5,))  # the EMA weights, not the live ones
        return {"colour": {"mse": float(nn.functional.mse_loss(predicted, mean_colour(images))),
                           "samples": len(images)}}

    def export(self, run: RunDir, evaluation: dict) -> dict:
        save_file({k: v.cpu().contiguous() for k, v in self.ema.items()}, run.path("mean_colour.safetensors"))
        return {"weights": join(run.url, "mean_colour.safetensors")}
