"""Text-to-image diffusion as one engine task: an MMDiT (`mmdit`) conditioned on a frozen open_clip text tower,
trained with the one loss of `loss.py` (any family, prediction, time sampler), with an EMA that grids, evaluation and
export use.

    from training.engine import fit
    fit(DiffusionTask(cfg, shards), cfg, out_dir="runs/demo/generator")

Per step: images in [-1, 1] (or their latents) and their captions' features (cached per caption), 10 % of captions
swapped for the learned null caption, the loss object draws noise levels and calls the network. Logged besides the
engine's columns: the mean loss per flow-time bin (`loss_t0.0-0.2`, ...: where the model still has to learn).
Every `sample.grid_every` steps and at the end, rank 0 writes `samples/step_*.png` from the EMA weights (fixed
prompts and seeds); after the last step it evaluates (`training.generative.evaluation`). A run leaves
`generator.safetensors` (EMA weights) and `generator.json` (network, image space, objective, the encoder and its
sha256; written before training, so a rerun with another encoder is refused before any step).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.layout import join, read_json, write_json_atomic
from pipeline.core.storage import exists
from training.data import ShardStream, make_loader
from training.engine.run_dir import RunDir
from training.engine.task import Task
from training.generative.diffusion.codec import PixelTransform, latent_geometry, make_codec, read_vae_config
from training.generative.diffusion.config import DiffusionTrainConfig
from training.generative.diffusion.generate import DESCRIPTION, WEIGHTS, Generator, describe, save_grid
from training.generative.diffusion.loss import DiffusionLoss
from training.generative.diffusion.mmdit import TextToImageNet
from training.generative.diffusion.noise import flow_time
from training.generative.ema import EMA
from training.generative.encoders import TextConditioner, load_encoder, text_widths


class TimeBins:
    """Mean loss per flow-time bin (t = sigma / (1 + sigma), t = 1 is noise) since the last read, over all ranks.
    Sums stay on the loss's device until a log step reads them: no device sync per step."""

    def __init__(self, bins: int = 5):
        self.bins = bins
        self.sums = torch.zeros(2, bins)  # (sum of losses, count) per bin

    def add(self, per_sample: torch.Tensor, sigma: torch.Tensor) -> None:
        self.sums = self.sums.to(per_sample.device)
        idx = (flow_time(sigma.float()) * self.bins).long().clamp(0, self.bins - 1).to(per_sample.device)
        self.sums[0].index_add_(0, idx, per_sample.detach().float())
        self.sums[1].index_add_(0, idx, torch.ones_like(per_sample, dtype=torch.float32))

    def read(self) -> dict[str, float]:
        both = self.sums.clone()
        if dist.is_available() and dist.is_initialized():  # every rank reads at the same log step
            dist.all_reduce(both)
        self.sums.zero_()
        return {f"loss_t{i / self.bins:.1f}-{(i + 1) / self.bins:.1f}": s / c
                for i, (s, c) in enumerate(both.cpu().T.tolist()) if c > 0}


def check_latent(cfg: DiffusionTrainConfig, where: str) -> None:
    """A latent generator needs the autoencoder folder and its channel count: refused before any training."""
    if cfg.latent.vae is None:
        return
    vae_cfg = read_vae_config(cfg.latent.vae, f"{where}.latent.vae")
    channels, size = latent_geometry(vae_cfg, cfg.data.resolution)
    if channels != cfg.latent.channels:
        raise ConfigError(f"{where}.latent.channels is {cfg.latent.channels}, but the autoencoder {where}.latent.vae "
                          f"= {cfg.latent.vae} has latent_channels {channels} (its config.json): make them agree")
    if size % cfg.model.patch_size:
        raise ConfigError(f"{where}.model.patch_size {cfg.model.patch_size} does not divide the latent side {size} "
                          f"({where}.data.resolution {cfg.data.resolution} through {cfg.latent.vae})")


def check_encoder(cfg: DiffusionTrainConfig, out_dir: str, where: str) -> dict:
    """The encoder loads as the model it names, its widths match any the model config states, and a run directory
    that already holds a generator was conditioned on this very checkpoint. Returns the conditioning record."""
    if cfg.encoder is None:
        raise ConfigError(f"{where}: no conditioning encoder (set encoder_from: a train-clip stage)")
    enc = load_encoder(cfg.encoder, "cpu", f"{where}.encoder_from")
    text_dim, pooled_dim, tokens = text_widths(enc.clip, enc.tokenizer)
    for key, have in (("text_dim", text_dim), ("pooled_dim", pooled_dim)):
        want = getattr(cfg.model, key)
        if want is not None and want != have:
            raise ConfigError(f"{where}.model.{key} is {want}, but the conditioning encoder {cfg.encoder.describe()} "
                              f"gives {have}: leave model.{key} unset or condition on an encoder of that width")
    record = {"name": cfg.encoder.name, "weights": cfg.encoder.weights, "source": cfg.encoder.source,
              "sha256": enc.sha256, "text_dim": text_dim, "pooled_dim": pooled_dim, "tokens": tokens}
    previous = join(out_dir, DESCRIPTION)
    if exists(previous):
        from training.generative.diffusion.generate import check_encoder as same_encoder

        same_encoder(read_json(previous)["encoder"], enc.sha256, cfg.encoder, f"{where} (resuming {out_dir})")
    return record


class DiffusionTask(Task):
    name = "train-diffusion"

    def __init__(self, cfg: DiffusionTrainConfig, shards: list[str], where: str = "train-diffusion"):
        self.cfg, self.shards, self.where = cfg, list(shards), where
        self.precision = cfg.precision
        self.batch_size = cfg.data.batch_size
        self.eval_every = cfg.sample.grid_every
        self.step, self.total = 0, cfg.steps
        self.prompts: list[str] = []

    # --- driver ---------------------------------------------------------------------------------------------------
    def prepare(self, out_dir: str) -> None:
        """Refuse a bad latent setup or encoder before any worker starts; fix the grid's prompts."""
        self.out_dir = out_dir
        check_latent(self.cfg, self.where)
        self.encoder_record = check_encoder(self.cfg, out_dir, self.where)
        # the objective and the encoder as trained, before any checkpoint exists: every step checkpoint of the run
        # is described, and a rerun with another encoder is refused
        write_json_atomic(join(out_dir, DESCRIPTION), describe(self.cfg, self.encoder_record))
        self.prompts = grid_prompts(self.cfg, self.shards)

    # --- every worker ---------------------------------------------------------------------------------------------
    def setup(self, rank: int, world: int, device: torch.device) -> nn.Module:
        cfg = self.cfg
        self.device = device
        self.conditioner = TextConditioner(cfg.encoder, device, cfg.conditioning.cache_size, f"{self.where}.encoder")
        self.codec = make_codec(cfg.latent.vae, cfg.data.resolution, device)
        cond = self.conditioner
        self.net = TextToImageNet(cfg.model, self.codec.size, self.codec.channels, cond.text_dim, cond.pooled_dim,
                                  cond.tokens)
        self.ema = EMA(self.net, cfg.ema.halflife_samples, cfg.ema.rampup)
        self.ema.module.to(device)  # the engine moves only the module it is given
        self.objective = DiffusionLoss(cfg.diffusion)
        self.bins = TimeBins()
        self.global_batch = cfg.data.batch_size * world * cfg.optim.accum_steps
        self.generator = Generator(self.ema.module, cond, self.codec, cfg.diffusion, cfg.sample.sampler, device)
        return self.net

    def batches(self, rank: int, world: int, seed: int) -> Iterator[dict]:
        data = self.cfg.data
        # `str` passes each caption through unchanged: features come from the cache here, not in loader processes
        stream = ShardStream(self.shards, PixelTransform(data.resolution), str, rank, world, data.seed + seed,
                             data.shuffle_buffer)
        for images, captions, skipped in make_loader(stream, data.batch_size, data.loader_workers):
            tokens, pooled = self.conditioner(list(captions))  # (B, T, D_text), (B, D_pool)
            x0 = self.codec.encode(images.to(self.device))  # (B, C, S, S)
            yield {"x0": x0, "tokens": tokens, "pooled": pooled, "skipped": skipped}

    def loss(self, model: nn.Module, batch: dict) -> dict:
        x0 = batch["x0"]
        null = torch.rand(x0.shape[0], device=x0.device) < self.cfg.conditioning.caption_dropout  # (B,)
        per_sample, sigma = self.objective(model, x0, (batch["tokens"], batch["pooled"], null))
        self.bins.add(per_sample, sigma)
        return {"loss": per_sample.mean()}

    def on_step_start(self, step: int, total: int) -> None:
        self.step, self.total = step + 1, total

    def after_update(self, step: int) -> None:
        self.ema.update(self.net, self.global_batch, (step + 1) * self.global_batch)

    def step_metrics(self) -> dict[str, float]:
        return self.bins.read()

    # --- rank 0 ---------------------------------------------------------------------------------------------------
    def grid(self) -> dict:
        """The sample grid of the EMA weights: fixed prompts (rows) and seeds (columns)."""
        cols = self.cfg.sample.seeds_per_prompt
        prompts = [p for p in self.prompts for _ in range(cols)]
        images, nfe = self.generator(prompts, list(range(cols)) * len(self.prompts))
        rel = f"samples/step_{self.step:07d}.png"
        save_grid(images, self.prompts, join(self.out_dir, rel))
        return {"grid": rel, "step": self.step, "nfe": nfe, "prompts": self.prompts}

    @torch.no_grad()
    def heldout_loss(self, n: int = 64) -> dict:
        """The EMA's loss on up to `n` held-out images at fixed noise: flow times spread evenly over (0, 1), noise
        of seed 0, captions kept. Comparable between steps and runs, unlike the training loss of random draws."""
        from training.generative.evaluation import read_heldout

        if getattr(self, "_heldout", None) is None:
            real = read_heldout(self.cfg.eval.heldout, self.cfg.data.resolution, n)
            crop = PixelTransform(self.cfg.data.resolution)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # a latent autoencoder samples its posterior: the same draw every time
                x0 = self.codec.encode(torch.stack([crop(im) for im in real.images]).to(self.device))
            self._heldout = (x0, *(t.to(self.device) for t in self.conditioner(real.captions)))
        x0, tokens, pooled = self._heldout
        t = (torch.arange(len(x0), dtype=torch.float64) + 0.5) / len(x0)
        sigma = (t / (1 - t)).float().to(self.device)
        null = torch.zeros(len(x0), device=self.device)
        per_sample, _ = self.objective(self.ema.module, x0, (tokens, pooled, null), torch.Generator().manual_seed(0),
                                       sigma)
        return {"loss": float(per_sample.mean()), "images": len(x0)}

    def evaluate(self) -> dict:
        out = {"samples": self.grid()}
        ev = self.cfg.eval
        if ev.heldout:
            out["heldout"] = self.heldout_loss()
        if self.step >= self.total and ev.anything:  # the full evaluation only after the last step
            from training.generative.evaluation import evaluate_generator

            sampler = ev.sampler or self.cfg.sample.sampler
            out |= evaluate_generator(lambda p, s: self.generator.images(p, s, sampler), ev, self.cfg.data.resolution,
                                      self.device, density=self.generator.density(ev.likelihood))
        return out

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v for k, v in self.ema.state_dict().items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            self.ema.load_state_dict({k.removeprefix("ema."): v.to(self.device) for k, v in tensors.items()})

    def export(self, run: RunDir, evaluation: dict) -> dict:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()}, run.path(WEIGHTS))
        with open(run.path(DESCRIPTION), "w") as f:
            json.dump(describe(self.cfg, self.encoder_record), f, indent=1)
        grid = (evaluation.get("samples") or {}).get("grid")
        return {"weights": join(run.url, WEIGHTS), "grid": join(run.url, grid) if grid else None}


def grid_prompts(cfg: DiffusionTrainConfig, shards: list[str]) -> list[str]:
    """The grid's rows: `sample.prompts`, else class prompts spread over the held-out classes, else the first
    distinct captions of the training shards."""
    n = cfg.sample.grid_prompts
    if cfg.sample.prompts:
        return list(cfg.sample.prompts)
    if cfg.eval.classnames:  # colours and shapes both vary down the grid: "red circle", "green square", ...
        from training.contrastive.eval import read_classnames
        from training.generative.evaluation import split_classes

        names = read_classnames(cfg.eval.classnames)[0]
        colours, shapes = split_classes(names)
        pairs = [f"{colours[i % len(colours)]} {shapes[i % len(shapes)]}".strip() for i in range(n)]
        return [cfg.eval.prompt.format(p) for p in pairs if p in names]
    from pipeline.core.sample import primary_caption
    from training.data import ErrorCounter, tar_samples

    found: list[str] = []
    for sample in tar_samples(shards[:1], ErrorCounter()):
        caption = primary_caption(sample)
        if caption and caption not in found:
            found.append(caption)
        if len(found) == n:
            break
    return found
