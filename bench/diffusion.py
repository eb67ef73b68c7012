"""The text-to-image diffusion trainer: training speed against a bare PyTorch loop, and sample quality per network
evaluation of the samplers on the trained model.

    python bench/diffusion.py            # tiny MMDiT (32 px, patch 4), batch 64, 300 steps each, ~15 min on 2 cores
    python bench/diffusion.py --full     # 1000 steps each, 512 images per sampler
    python bench/diffusion.py --workdir W --samplers-only   # (2) again on the model a run with --workdir W left

(1) Training steps/s: winnow's train-diffusion task (the engine on an already started local Ray, one Ray Train
worker) against the loop a user writes from minRF's rf.py: the same `SD3Transformer2DModel` config, batch, shards,
image crop, frozen text tower with a caption cache, rectified-flow loss on logit-normal times, 10 % caption dropout to
a learned null caption, AdamW, gradient clipping and an EMA; webdataset reads the shards. Same torch threads, one
DataLoader worker each. Throughput is the steady state (the first log window left out), best of the rounds.
(2) Sample quality per evaluation: on winnow's trained model, the Frechet distance to the held-out images (features
of the conditioning CLIP's image tower; every sampler starts from the same noise) of Heun with 18 levels (35
evaluations), Euler with 35 and Euler with 100; and, on the first 64 of those noises, each one's RMS pixel distance
to Heun with 100 levels (199 evaluations, the ODE's own answer): the discretisation error the Frechet distance mixes
with the model's error and its sample noise.
Last lines: RESULT diffusion_vs_bare_loop=... target>=0.95 and RESULT heun35_fd_over_euler100_fd=... target<=1.0
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the shapes shard maker and the CLIP helper live with the tests

from bench.common import machine, result_line  # noqa: E402

MODEL = {"layers": 4, "heads": 4, "head_dim": 32, "patch_size": 4}
RESOLUTION, DROPOUT = 32, 0.1


def task_config(encoder, steps: int, batch: int, threads: int, log_every: int, heldout: str):
    from training.generative.diffusion.config import DiffusionTrainConfig

    return DiffusionTrainConfig.model_validate({
        "steps": steps, "log_every": log_every, "checkpoint_every": steps, "model": MODEL, "precision": "fp32",
        "optim": {"lr": 1e-3, "warmup_steps": 20, "grad_clip": 1.0}, "encoder": encoder.model_dump(),
        "data": {"resolution": RESOLUTION, "batch_size": batch, "loader_workers": 1, "shuffle_buffer": 1000},
        "conditioning": {"caption_dropout": DROPOUT}, "eval": {"heldout": heldout, "synthetic_test": False},
        "sample": {"sampler": {"method": "euler", "steps": 4}, "prompts": ["a red circle"], "seeds_per_prompt": 1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": threads}})


def winnow_rate(cfg, shards: list[str], out: str) -> float:
    import ray

    from pipeline.runtime import RayConfig, init_ray
    from training.engine import fit
    from training.generative.diffusion.task import DiffusionTask

    if not ray.is_initialized():
        init_ray(RayConfig(num_cpus=os.cpu_count() or 2))
    fit(DiffusionTask(cfg, shards), cfg, out)
    with open(os.path.join(out, "metrics.csv")) as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
    return sum(rates[1:]) / len(rates[1:])


def bare_rate(cfg, shards: list[str], threads: int) -> float:
    """minRF's loop around the same network and data, written as a user would; samples/s after the first window."""
    import torch
    import webdataset as wds
    from diffusers import SD3Transformer2DModel

    from pipeline.core.images import open_rgb
    from training.generative.diffusion.codec import PixelTransform
    from training.generative.encoders import TextConditioner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    text = TextConditioner(cfg.encoder)
    width = MODEL["heads"] * MODEL["head_dim"]
    net = SD3Transformer2DModel(sample_size=RESOLUTION, patch_size=MODEL["patch_size"], in_channels=3, out_channels=3,
                                num_layers=MODEL["layers"], attention_head_dim=MODEL["head_dim"],
                                num_attention_heads=MODEL["heads"], joint_attention_dim=text.text_dim,
                                caption_projection_dim=width, pooled_projection_dim=text.pooled_dim,
                                pos_embed_max_size=RESOLUTION // MODEL["patch_size"], qk_norm="rms_norm")
    null_tokens = torch.nn.Parameter(0.02 * torch.randn(text.tokens, text.text_dim))
    null_pooled = torch.nn.Parameter(0.02 * torch.randn(text.pooled_dim))
    params = [*net.parameters(), null_tokens, null_pooled]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.0)
    crop = PixelTransform(RESOLUTION)
    data = (wds.WebDataset(shards, shardshuffle=False).repeat().shuffle(1000)
            .map(lambda s: (crop(open_rgb(s["jpg"])), s["txt"].decode())).batched(cfg.data.batch_size))
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=4)
    rates, t0 = [], time.perf_counter()
    for step, (x0, captions) in enumerate(loader, start=1):
        tokens, pooled = text(list(captions))
        drop = (torch.rand(len(x0)) < DROPOUT).float()
        tokens = (1 - drop[:, None, None]) * tokens + drop[:, None, None] * null_tokens
        pooled = (1 - drop[:, None]) * pooled + drop[:, None] * null_pooled
        t = torch.sigmoid(torch.randn(len(x0)))  # logit-normal times, t = 1 is noise
        eps = torch.randn_like(x0)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
        v = net(x_t, tokens, pooled, 1000 * t).sample
        loss = ((v - (eps - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 0.01)
        if step % cfg.log_every == 0:
            rates.append(cfg.log_every * cfg.data.batch_size / (time.perf_counter() - t0))
            t0 = time.perf_counter()
        if step == cfg.steps:
            break
    return sum(rates[1:]) / len(rates[1:])


SAMPLERS = (("heun, 18 levels", "heun", 18), ("euler, 35 levels", "euler", 35), ("euler, 100 levels", "euler", 100))
REFERENCE = ("heun, 100 levels", "heun", 100)  # 199 evaluations: the ODE solution the others approximate


def sampler_fds(model_dir: str, encoder, heldout: str, images: int, threads: int,
                ref_images: int) -> dict[str, tuple[int, float, float, float]]:
    """{name: (evaluations, Frechet distance, ODE error, seconds)} of each sampler on the same prompts and noise
    seeds. The ODE error is the RMS pixel distance ([-1, 1] units) of its first `ref_images` images to the reference
    sampler's on the same noise: how far the sampler is from the probability-flow ODE's own answer, which the
    Frechet distance (model error + discretisation error + sample noise) may not resolve."""
    import torch

    from training.generative.config import SamplerConfig
    from training.generative.diffusion.codec import to_pil
    from training.generative.diffusion.generate import load_generator
    from training.generative.diffusion.samplers import evaluations
    from training.generative.encoders import load_encoder
    from training.generative.evaluation import (
        frechet_distance,
        gaussian_of,
        generate_batched,
        image_features,
        read_heldout,
    )

    torch.set_num_threads(threads)  # as training: on a shared machine more threads than free cores stall
    gen = load_generator(model_dir, encoder)
    features = load_encoder(encoder)
    real = read_heldout(heldout, RESOLUTION, images)
    reference = gaussian_of(image_features(features, real.images, "cpu"))
    seeds = list(range(len(real.captions)))

    def run(method: str, steps: int, n: int) -> torch.Tensor:
        cfg = SamplerConfig(method=method, steps=steps, guidance=1.0)
        return generate_batched(lambda p, s: gen.images(p, s, cfg), real.captions[:n], seeds[:n], 64)

    t0 = time.perf_counter()
    exact = run(REFERENCE[1], REFERENCE[2], ref_images)
    print(f"  reference: {REFERENCE[0]} ({evaluations(*REFERENCE[1:])} evaluations) on {ref_images} images "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {}
    for name, method, steps in SAMPLERS:
        t0 = time.perf_counter()
        fakes = run(method, steps, len(seeds))
        feats = image_features(features, to_pil(fakes), "cpu")
        nfe = evaluations(method, steps)
        ode = float((fakes[:ref_images] - exact).pow(2).mean().sqrt())
        out[name] = (nfe, frechet_distance(*gaussian_of(feats), *reference), ode, time.perf_counter() - t0)
        print(f"  {name:18s} {nfe:4d} evaluations  FD {out[name][1]:.4f}  ODE error {ode:.4f}  "
              f"({out[name][3]:.0f} s)", flush=True)
    return out


def training_rounds(cfg, shards: list[str], work: str, args) -> float:
    """Bare loop and winnow, interleaved `args.repeats` times; returns best winnow / best bare samples/s."""
    print(f"MMDiT {MODEL}, {RESOLUTION} px, batch {args.batch}, fp32, {cfg.steps} steps, 1 training process, "
          f"1 loader worker, {args.threads} torch thread(s), {len(shards)} shards x 512 samples")
    bare, ours = [], []
    for r in range(args.repeats):  # interleaved, so load from elsewhere hits both alike
        bare.append(bare_rate(cfg, shards, args.threads))
        ours.append(winnow_rate(cfg, shards, os.path.join(work, f"winnow{r}")))
        print(f"  round {r + 1}: bare loop {bare[-1]:.1f}, winnow {ours[-1]:.1f} samples/s "
              f"({ours[-1] / bare[-1]:.2f}x)", flush=True)
    print(f"bare PyTorch loop      {max(bare):8.1f} samples/s (best round)")
    print(f"winnow train-diffusion {max(ours):8.1f} samples/s   ({max(ours) / max(bare):.2f}x the bare loop)")
    return max(ours) / max(bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="1000 steps and 512 images per sampler")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=None, help="generated images per sampler (FD)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved training rounds; the best of each counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    ap.add_argument("--samplers-only", action="store_true",
                    help="skip training: compare the samplers on the model a previous run left in --workdir")
    args = ap.parse_args()
    if args.samplers_only and not args.workdir:
        ap.error("--samplers-only needs the --workdir of a previous run")
    steps = args.steps or (1000 if args.full else 300)
    images = args.images or (512 if args.full else 256)

    from training_diffusion import ENCODER, train_clip
    from training_shapes import make_pool, make_testset

    from training.generative.config import EncoderRef

    work = args.workdir or tempfile.mkdtemp(prefix="bench-diffusion-")
    try:
        print(f"machine: {machine()}")
        if args.samplers_only:
            heldout = os.path.join(work, "heldout", "00000.tar")
            encoder = EncoderRef(name=ENCODER, weights=os.path.join(work, "clip", "model.pt"))
        else:
            shards = make_pool(work, "pool", shards=4, per_shard=512)
            heldout, _ = make_testset(os.path.join(work, "heldout"), n=images)
            encoder = EncoderRef(name=ENCODER, weights=train_clip(shards, os.path.join(work, "clip"), 100, seed=1))
            cfg = task_config(encoder, steps, args.batch, args.threads, max(10, steps // 10), heldout)
            ratio = training_rounds(cfg, shards, work, args)
        print(f"samplers on winnow's model ({images} images, FD against {images} held-out images):")
        fds = sampler_fds(os.path.join(work, f"winnow{args.repeats - 1}"), encoder, heldout, images, args.threads,
                          min(images, 64))
        heun, euler100 = fds["heun, 18 levels"][1], fds["euler, 100 levels"][1]
        if not args.samplers_only:
            print(result_line("diffusion_vs_bare_loop", ratio, ">=", 0.95))
        print(result_line("heun35_fd_over_euler100_fd", heun / euler100, "<=", 1.0))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
