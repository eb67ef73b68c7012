"""Normalizing flows (NICE, RealNVP, Glow) as an engine task: maximum likelihood on uniformly dequantised 8-bit
pixels, the loss in bits/dim, evaluation in bits/dim of held-out images (exact: the change of variables), export
of the weights and a sample grid.

Glow's actnorm is initialised from data in `setup`, i.e. before the engine wraps the model in DDP: every rank reads
the same first `init_samples` images of the training shards in file order and dequantises them with the same seed,
so every rank computes the same values (and DDP's broadcast of rank 0's has nothing to fix). A run that has a
checkpoint skips it: its actnorm and `initialised` flags come from the checkpoint, which the engine loads after
`setup`; an actnorm that is neither initialised nor loaded refuses to run.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator

import torch
from torch import nn

from pipeline.core.layout import join
from training.engine.checkpoint import complete_checkpoints
from training.engine.run_dir import RunDir
from training.engine.task import Task
from training.generative.ema import EMA
from training.generative.flows.artifacts import image_grid, sample_pixels, save_flow
from training.generative.flows.conditioning import caption_encoder
from training.generative.flows.config import FlowTaskConfig
from training.generative.flows.data import first_images, pixel_batches
from training.generative.flows.multiscale import FlowModel
from training.generative.likelihood import Preprocess, bits_per_dim, dequantize, heldout_bits_per_dim

INIT_SEED = 1234  # the actnorm batch's dequantisation noise: fixed, so every rank draws the same


class FlowTask(Task):
    name = "train-flow"
    precision = "fp32"  # a log-density sums thousands of log-det terms: no half precision

    def __init__(self, cfg: FlowTaskConfig, shards: list[str], heldout: list[str] | None = None,
                 classnames: list[str] | None = None):
        self.classnames = list(classnames) if classnames else None
        if cfg.model.conditioning == "class" and not cfg.model.classes and self.classnames:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"classes": len(self.classnames)})})
        self.cfg, self.shards, self.heldout = cfg, list(shards), list(heldout or [])
        self.batch_size, self.eval_every = cfg.batch_size, cfg.eval_every
        self.preprocess = Preprocess(cfg.preprocess, cfg.logit_alpha)
        self.encode = caption_encoder(cfg.model, self.classnames)  # fails here, before workers start
        self.conditional = cfg.model.conditioning != "none"
        self.out_dir: str | None = None
        self.actnorm_inits = 0  # data-dependent initialisations done by this process (tests read it)
        self._heldout: tuple | None = None

    def prepare(self, out_dir: str) -> None:
        if not self.shards:
            raise ValueError("the flow task has no training shards")
        self.out_dir = out_dir

    # --- every worker -------------------------------------------------------------------------------------------
    def setup(self, rank: int, world: int, device: torch.device) -> nn.Module:
        self.device = device
        self.net = FlowModel(self.cfg.model, 3, self.cfg.resolution)
        if self.net.actnorms() and not self.resuming():
            pixels, ids, _ = first_images(self.shards, self.cfg.init_samples, self.cfg.resolution, self.encode)
            x, _ = self.preprocess(dequantize(pixels, torch.Generator().manual_seed(INIT_SEED)))
            self.net.initialize(x.float(), self.ids(ids))
            self.actnorm_inits += 1
        self.global_batch = self.cfg.batch_size * world
        self.tracker = None
        if self.cfg.ema_halflife_samples:  # EDM's half-life in samples with ramp-up (the diffusion task's EMA)
            self.tracker = EMA(self.net, self.cfg.ema_halflife_samples, self.cfg.ema_rampup)
            self.ema = self.tracker.module.to(device)
        else:
            self.ema = copy.deepcopy(self.net).requires_grad_(False).to(device) if self.cfg.ema_decay else None
        return self.net

    def resuming(self) -> bool:
        """Whether the engine will load a checkpoint after `setup` (it resumes from the newest complete one)."""
        return self.out_dir is not None and bool(complete_checkpoints(join(self.out_dir, "checkpoints")))

    def ids(self, cond: torch.Tensor) -> torch.Tensor | None:
        return cond if self.conditional else None

    def batches(self, rank: int, world: int, seed: int) -> Iterator[dict]:
        cfg = self.cfg
        return pixel_batches(self.shards, cfg.resolution, self.encode, cfg.batch_size, rank=rank, world=world,
                             seed=seed, workers=cfg.loader_workers, shuffle_buffer=cfg.shuffle_buffer)

    def loss(self, model: nn.Module, batch: dict) -> dict:
        pixels = batch["pixels"]
        y = pixels.float() + torch.rand(pixels.shape, device=pixels.device)  # uniform dequantisation
        x, log_det = self.preprocess(y)
        log_p = model(x, self.ids(batch["cond"]))
        return {"loss": bits_per_dim(log_p, log_det, pixels[0].numel()).mean()}

    def after_update(self, step: int) -> None:
        if self.tracker is not None:
            self.tracker.update(self.net, self.global_batch, (step + 1) * self.global_batch)
            return
        if self.ema is None:
            return
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                e.lerp_(p, 1 - self.cfg.ema_decay)
            for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
                e.copy_(b)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {} if self.ema is None else {f"ema.{k}": v for k, v in self.ema.state_dict().items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.ema is not None and tensors:
            self.ema.load_state_dict({k.removeprefix("ema."): v for k, v in tensors.items()})

    # --- rank 0 -------------------------------------------------------------------------------------------------
    def eval_net(self) -> FlowModel:
        return (self.ema if self.ema is not None else self.net).eval()

    def heldout_images(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if self._heldout is None:
            self._heldout = first_images(self.heldout, self.cfg.eval_samples, self.cfg.resolution, self.encode)
        return self._heldout

    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.heldout:
            return {}
        net = self.eval_net()
        pixels, ids, names = self.heldout_images()
        result = heldout_bits_per_dim(net, pixels, names, self.ids(ids), preprocess=self.preprocess,
                                      seed=self.cfg.eval_seed, batch_size=self.cfg.eval_batch_size,
                                      device=self.device)
        self.net.train()
        return {"likelihood": {**result.as_dict(), "method": "exact change of variables"}}

    def grid_ids(self, n: int) -> torch.Tensor | None:
        """Conditioning of the sample grid: one class per row; for text, the held-out captions."""
        if self.cfg.model.conditioning == "class":
            return (torch.arange(n) // self.cfg.grid % self.cfg.model.classes).to(self.device)
        if self.cfg.model.conditioning == "text":
            ids = self.heldout_images()[1] if self.heldout else torch.zeros(n, self.cfg.model.text_words)
            return ids[torch.arange(n) % len(ids)].long().to(self.device)
        return None

    def export(self, run: RunDir, evaluation: dict) -> dict:
        net = self.eval_net()
        weights = save_flow(run.local, net, self.preprocess, self.classnames)
        n = self.cfg.grid**2
        pixels = sample_pixels(net, self.preprocess, list(range(n)), self.grid_ids(n), self.cfg.temperature)
        image_grid(pixels, self.cfg.grid, scale=max(1, math.ceil(64 / self.cfg.resolution))).save(
            run.path("samples.png"))
        return {"weights": join(run.url, os.path.basename(weights)), "samples": join(run.url, "samples.png")}


def flow_task_config(cfg) -> FlowTaskConfig:
    """A train-diffusion stage's config (`DiffusionTrainConfig` with a flow `model`) as the flow task's: the shared
    sections (data, ema, eval.likelihood, sample.grid_every) and the stage's `flow:` section."""
    f, d, lk = cfg.flow, cfg.data, cfg.eval.likelihood
    return FlowTaskConfig(
        **f.model_dump(), model=cfg.model, resolution=d.resolution,
        batch_size=d.batch_size, loader_workers=d.loader_workers, shuffle_buffer=d.shuffle_buffer,
        ema_decay=None, ema_halflife_samples=cfg.ema.halflife_samples, ema_rampup=cfg.ema.rampup,
        eval_samples=max(1, lk.samples), eval_batch_size=lk.batch_size, eval_seed=lk.seed,
        eval_every=cfg.sample.grid_every)
