"""The GPU benchmarks, in one run: each of winnow's GPU paths beside what a user would run instead.

    python bench/gpu.py                         # on a CUDA machine: every part at its real size (~20-30 min)
    python bench/gpu.py --parts score caption   # some of them
    python bench/gpu.py --device cpu --tiny     # smoke run: every part at toy size on the CPU (no figures)

Without a CUDA device (and without `--device cpu`) it prints "no CUDA device: ..." and exits 0 without results.

    train_clip   the train-clip task (the engine in this process, on the GPU) vs `open_clip_train.main` on the same
                 shapes shards: ViT-B-32, CLIP loss, bf16 autocast, batch 256; samples/s in the steady state (the
                 first log window left out) and MFU = samples/s x training FLOPs per sample (counted by
                 torch.utils.flop_counter on one forward and backward) / the card's dense bf16 peak
    score        the score stage (Ray Data read tasks and one model actor on the GPU) vs the plain loop a user
                 writes (`bench/score.py`'s: the same decode, signals, crops and files, the model on the GPU);
                 images/s of wall time, random ViT-B-32 weights, 256 px JPEG shards
    caption      winnow's captioner (key/value-cached greedy decoding) vs open_clip's `CoCa.generate` (greedy, the
                 same length) on the same images and weights (random coca_ViT-B-32); captions/s. If open_clip's
                 generate is unavailable (open_clip 3.3 disables it beside transformers >= 4.56), the peer is the
                 loop it runs: the full prefix through the model at every step
    diffusion    the train-diffusion task (engine, data from the shards) vs a bare loop around the same MMDiT
                 (in-memory batches already on the GPU: an upper bound for the user's loop), bf16, samples/s; and
                 sampling: network evaluations x images per second of winnow's generator (Euler, CFG off) vs a bare
                 Euler loop calling the same network
    likelihood   held-out bits/dim through the probability-flow ODE (dopri5, Hutchinson, 1 probe) on the GPU:
                 the value, seconds per image, and the same first images on the CPU (they must agree)
    ddp          train-clip on Ray Train over NCCL on every GPU present (one worker per GPU) vs one GPU:
                 samples/s of the global batch and the scaling efficiency

Last lines: RESULT gpu_<part>_... per measured comparison (none in a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the shapes shard maker lives with the tests

from bench.common import machine, result_line  # noqa: E402
from bench.gpu_models import caption, diffusion, likelihood, steady_rate  # noqa: E402, F401  (parts, by name)

PARTS = ("train_clip", "score", "caption", "diffusion", "likelihood", "ddp")
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "RTX 4090": 165e12}  # dense bf16 FLOP/s, from the vendors' data sheets (SXM parts)
PEER = ("import sys; from pipeline.core.model_configs import register_model_configs; register_model_configs(); "
        "from open_clip_train.main import main; main(sys.argv[1:])")


@dataclass
class Run:
    """What every part needs: the device, the sizes (real or toy) and a work folder."""

    device: str
    tiny: bool
    work: Path
    steps: int

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def size(self, real, tiny):
        return tiny if self.tiny else real


# --- train_clip ----------------------------------------------------------------------------------------------------


def clip_config(run: Run, model: str, batch: int, workers: int = 0, gpus: float = 0.0):
    from training.contrastive.config import TrainConfig

    return TrainConfig.model_validate({
        "objective": "clip", "model": {"name": model, "precision": "bf16"}, "steps": run.steps,
        "log_every": max(2, run.steps // 5), "checkpoint_every": run.steps,
        "optim": {"lr": 5e-4, "warmup_steps": 10, "weight_decay": 0.1},
        "data": {"batch_size": batch, "loader_workers": run.size(8, 1), "shuffle_buffer": run.size(2000, 64)},
        "scaling": {"num_workers": workers, "cpus_per_worker": run.size(8, 1), "gpus_per_worker": gpus},
        "eval": {"synthetic_test": False}})


def training_flops_per_sample(model_name: str, batch: int = 2) -> float:
    """FLOPs of one forward and backward of the CLIP per sample (torch's FLOP counter, on the CPU, fp32)."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.core.model_configs import register_model_configs

    register_model_configs()
    model = open_clip.create_model(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    text = open_clip.get_tokenizer(model_name)(["a photo of a red circle"] * batch)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(torch.randn(batch, 3, *size), text)
        (out[0] @ out[1].T).sum().backward()
    return counter.get_total_flops() / batch


def peak_flops(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def open_clip_train_rate(run: Run, shards: list[str], model: str, batch: int, out: str) -> float:
    pattern = os.path.join(os.path.dirname(shards[0]), f"{{00000..{len(shards) - 1:05d}}}.tar")
    log_every = max(2, run.steps // 5)
    args = ["--train-data", pattern, "--train-num-samples", str(run.steps * batch), "--dataset-type", "webdataset",
            "--model", model, "--batch-size", str(batch), "--precision", "amp_bf16", "--workers",
            str(run.size(8, 1)), "--epochs", "1", "--lr", "5e-4", "--warmup", "10", "--wd", "0.1",
            "--save-frequency", "0", "--report-to", "", "--log-every-n-steps", str(log_every), "--logs", out,
            "--name", "peer", "--device", run.device, "--seed", "0"]
    proc = subprocess.run([sys.executable, "-c", PEER, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{proc.stderr[-3000:]}")
    import re

    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", proc.stderr + proc.stdout)]
    if not times:
        raise RuntimeError(f"no throughput lines in open_clip_train's log:\n{proc.stderr[-3000:]}")
    times = times[1:] or times
    return sum(batch / t for t in times) / len(times)


def train_clip(run: Run) -> dict:
    from training_shapes import make_pool

    from training.contrastive.task import ContrastiveTask
    from training.engine import fit

    model, batch = run.size("ViT-B-32", "tiny-clip-vit"), run.size(256, 8)
    shards = make_pool(str(run.work), "clip_pool", shards=run.size(16, 2), per_shard=run.size(1024, 64))
    cfg = clip_config(run, model, batch)
    fit(ContrastiveTask(cfg, shards), cfg, str(run.work / "train_clip"))  # in this process, on run's device
    ours = steady_rate(str(run.work / "train_clip" / "metrics.csv"))
    peer = open_clip_train_rate(run, shards, model, batch, str(run.work / "open_clip_train"))
    flops = training_flops_per_sample(model)
    peak = peak_flops(run.device)
    out = {"winnow samples/s": ours, "open_clip_train samples/s": peer, "ratio": ours / peer,
           "GFLOP per sample": flops / 1e9}
    if peak:
        out |= {"winnow MFU": ours * flops / peak, "open_clip MFU": peer * flops / peak}
    return out


# --- score ---------------------------------------------------------------------------------------------------------


def score(run: Run) -> dict:
    from bench.common import end_embedded_run
    from bench.score import BENCH_MODEL, make_pool, model_spec, plain_loop, score_stage

    root = run.work / "score"
    images = run.size(16_000, 64)
    make_pool(root, images, shard_size=run.size(1000, 32))
    spec = model_spec(run.size("ViT-B-32", BENCH_MODEL), run.work)
    batch, cpus = run.size(256, 16), run.size(os.cpu_count() or 8, 2)
    from pipeline.runtime import RayConfig, init_ray

    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=cpus))  # a cluster is up before jobs reach it: its start-up is printed apart
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    n, split = score_stage(spec, root, cpus, batch, address="", device="cuda" if run.cuda else "cpu")
    stage = n / (time.perf_counter() - t0)
    end_embedded_run(root, keep=True)
    loop, m = plain_loop(spec, root, threads=run.size(8, 1), batch=batch, device=run.device)
    return {"stage images/s": stage, "plain loop images/s": loop, "ratio": stage / loop, "images": n,
            "loop images": m, "Ray start-up s (not counted)": ray_start, "stage start-up s":
            split.get("startup_seconds"), "stage bottleneck": split.get("bottleneck")}


# --- ddp -----------------------------------------------------------------------------------------------------------


def ddp(run: Run) -> dict:
    import ray
    import torch
    from training_shapes import make_pool

    from pipeline.runtime import RayConfig, init_ray
    from training.contrastive.task import ContrastiveTask
    from training.engine import fit

    gpus = torch.cuda.device_count() if run.cuda else 0
    workers = max(gpus, 1)
    model, batch = run.size("ViT-B-32", "tiny-clip-vit"), run.size(256, 8)
    shards = make_pool(str(run.work), "ddp_pool", shards=run.size(32, 2), per_shard=run.size(1024, 64))
    if not ray.is_initialized():
        init_ray(RayConfig(num_cpus=os.cpu_count() or 2))
    rates = {}
    for n in dict.fromkeys([1, workers]):
        cfg = clip_config(run, model, batch, workers=n, gpus=1.0 if gpus else 0.0)
        out = run.work / f"ddp{n}"
        fit(ContrastiveTask(cfg, shards), cfg, str(out))
        rates[n] = steady_rate(str(out / "metrics.csv"))
    ray.shutdown()
    result = {f"{n} worker(s) samples/s": r for n, r in rates.items()}
    result["backend"] = "nccl" if gpus else "gloo (CPU)"
    if workers > 1:
        result["scaling efficiency"] = rates[workers] / (workers * rates[1])
    return result


RESULTS = {"train_clip": ("ratio", "gpu_train_clip_vs_open_clip", ">=", 1.0),
           "score": ("ratio", "gpu_score_stage_vs_loop", ">=", 1.0),
           "caption": ("ratio", "gpu_caption_vs_open_clip", ">=", 1.0),
           "diffusion": ("train ratio", "gpu_diffusion_vs_bare_loop", ">=", 0.95),
           "ddp": ("scaling efficiency", "gpu_ddp_scaling_efficiency", ">=", 0.9)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny: a smoke run)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: every code path runs, no figure means anything")
    ap.add_argument("--steps", type=int, default=None, help="training steps of each trained side (default 60; 6)")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py measures GPU paths only; nothing measured "
              "(run with --device cpu --tiny for a smoke run of its code paths)")
        return 0
    if not args.device.startswith("cuda") and not args.tiny:
        print("--device cpu runs only with --tiny (a smoke run); the CPU figures are bench/*.py's")
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(args.device, args.tiny, work, args.steps or (6 if args.tiny else 60))
    card = torch.cuda.get_device_name() if run.cuda else "none (smoke run on the CPU)"
    print(f"machine: {machine()}\ndevice: {args.device}, card: {card}, torch {torch.__version__}, "
          f"{'tiny (smoke) sizes' if args.tiny else 'real sizes'}, {run.steps} training steps per side")
    results, failed = [], []
    try:
        for part in args.parts:
            t0 = time.perf_counter()
            print(f"[{part}]", flush=True)
            try:
                figures = globals()[part](run)
            except Exception as err:  # noqa: BLE001  (one part failing must not cost the others' figures)
                failed.append(part)
                print(f"  FAILED: {type(err).__name__}: {str(err)[:2000]}", flush=True)
                continue
            for key, value in figures.items():
                shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else value
                print(f"  {key}: {shown}")
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if part in RESULTS and RESULTS[part][0] in figures:
                key, metric, op, target = RESULTS[part]
                results.append(result_line(metric, figures[key], op, target))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.tiny:
        print(f"smoke run: {len(args.parts) - len(failed)} of {len(args.parts)} parts ran"
              + (f"; failed: {', '.join(failed)}" if failed else "") + " (toy sizes: no RESULT lines)")
    else:
        print("\n".join(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
