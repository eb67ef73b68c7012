"""Training throughput: winnow's train-clip trainer vs open_clip's own `open_clip_train.main`, and the loader alone.

    python bench/train_clip.py            # tiny SigLIP, batch 64, 150 steps each, 1 worker, fp32, on CPU
    python bench/train_clip.py --full     # 600 steps each

Both train the same model config (configs/models/tiny-sigmoid-vit.json) with the sigmoid loss on the same shapes
shards, same batch size, precision, one training process with one DataLoader worker and the same torch thread
count. winnow runs on an already started local Ray (one Ray Train worker); open_clip_train runs as a user runs it,
in a subprocess. Throughput is steady-state samples/s from each trainer's own logs, the first log window (start-up,
warm-up) left out. Then winnow's loader runs alone, to show it is not the bottleneck. Last line:
RESULT train_clip_vs_open_clip=... target>=1.0
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the shapes shard maker lives with the tests

from bench.common import machine, result_line  # noqa: E402

MODEL = "tiny-sigmoid-vit"
PEER = ("import sys; from pipeline.core.model_configs import register_model_configs; register_model_configs(); "
        "from open_clip_train.main import main; main(sys.argv[1:])")


def winnow_rate(shards: list[str], out: str, steps: int, batch: int, threads: int, log_every: int) -> float:
    import ray

    from pipeline.runtime import RayConfig, init_ray
    from training.contrastive.config import TrainConfig
    from training.contrastive.task import ContrastiveTask
    from training.engine import fit

    if not ray.is_initialized():
        init_ray(RayConfig(num_cpus=os.cpu_count() or 2))
    cfg = TrainConfig.model_validate({
        "objective": "siglip", "model": {"name": MODEL, "precision": "fp32"}, "steps": steps,
        "log_every": log_every, "checkpoint_every": steps,
        "optim": {"lr": 5e-4, "warmup_steps": 20, "weight_decay": 0.1, "grad_clip": None},
        "data": {"batch_size": batch, "loader_workers": 1, "shuffle_buffer": 1000},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": threads},
        "eval": {"synthetic_test": False}})
    fit(ContrastiveTask(cfg, shards), cfg, out)
    with open(os.path.join(out, "metrics.csv")) as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
    return sum(rates[1:]) / len(rates[1:])


def open_clip_args(shards: list[str], out: str, *, model: str, steps: int, batch: int, lr: float, warmup: int,
                   log_every: int, seed: int = 0) -> list[str]:
    """`open_clip_train.main` arguments for `steps` x `batch` on `shards` in fp32 on the CPU, one loader worker,
    AdamW (wd 0.1, beta2 0.98, eps 1e-6) on warmup + cosine; logs under `<out>/peer`."""
    return ["--train-data", "::".join(shards), "--train-num-samples", str(steps * batch), "--dataset-type",
            "webdataset", "--model", model, "--batch-size", str(batch), "--precision", "fp32", "--workers", "1",
            "--epochs", "1", "--lr", str(lr), "--warmup", str(warmup), "--wd", "0.1", "--beta2", "0.98", "--eps",
            "1e-6", "--report-to", "", "--log-every-n-steps", str(log_every), "--logs", out, "--name", "peer",
            "--device", "cpu", "--seed", str(seed)]


def run_open_clip_train(args: list[str], threads: int) -> str:
    """Run `open_clip_train.main` as a user runs it, in a subprocess (winnow's model configs registered, `threads`
    torch threads); its log text."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", PEER, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{proc.stderr[-3000:]}")
    return proc.stderr + proc.stdout


def open_clip_rate(shards: list[str], out: str, steps: int, batch: int, threads: int, log_every: int) -> float:
    args = open_clip_args(shards, out, model=MODEL, steps=steps, batch=batch, lr=5e-4, warmup=20,
                          log_every=log_every)
    log = run_open_clip_train([*args, "--siglip", "--save-frequency", "0"], threads)
    # "Batch (t): 0.184, 347.2/s, ..." : the average batch time of each log window
    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", log)]
    if len(times) < 2:
        raise RuntimeError(f"no throughput lines in open_clip_train's log:\n{log[-3000:]}")
    return sum(batch / t for t in times[1:]) / len(times[1:])


def loader_rate(shards: list[str], batch: int, batches: int) -> float:
    import open_clip

    from pipeline.core.model_configs import register_model_configs
    from training.contrastive.data import ShardStream, TokenEncoder, make_loader

    register_model_configs()
    _, preprocess, _ = open_clip.create_model_and_transforms(MODEL)
    stream = ShardStream(shards, preprocess, TokenEncoder(open_clip.get_tokenizer(MODEL)), shuffle_buffer=1000)
    it = iter(make_loader(stream, batch, workers=1))
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t0)
    del it
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="600 steps instead of 150")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each trainer's training process")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    steps = args.steps or (600 if args.full else 150)
    log_every = max(10, steps // 10)

    from training_shapes import make_pool

    work = args.workdir or tempfile.mkdtemp(prefix="bench-train-clip-")
    try:
        shards = make_pool(work, "pool", shards=8, per_shard=512)
        print(f"machine: {machine()}")
        print(f"model {MODEL}, siglip, batch {args.batch}, fp32, {steps} steps, 1 training process, "
              f"1 loader worker, {args.threads} torch thread(s), {len(shards)} shards x 512 samples")
        peers, ours_runs = [], []
        for r in range(args.repeats):  # interleaved, so load from elsewhere on the machine hits both alike
            peers.append(open_clip_rate(shards, os.path.join(work, f"open_clip{r}"), steps, args.batch,
                                        args.threads, log_every))
            ours_runs.append(winnow_rate(shards, os.path.join(work, f"winnow{r}"), steps, args.batch, args.threads,
                                         log_every))
            print(f"  round {r + 1}: open_clip {peers[-1]:.1f}, winnow {ours_runs[-1]:.1f} samples/s", flush=True)
        peer, ours = max(peers), max(ours_runs)  # best of the rounds: the least disturbed run of each
        print(f"open_clip_train.main   {peer:8.1f} samples/s")
        print(f"winnow train-clip      {ours:8.1f} samples/s   ({ours / peer:.2f}x open_clip)")
        loader = loader_rate(shards, args.batch, batches=max(30, steps // 3))
        print(f"winnow loader alone    {loader:8.1f} samples/s   ({loader / ours:.2f}x the training step rate; "
              f"target >= 2x)")
        print(result_line("train_clip_vs_open_clip", ours / peer, ">=", 1.0))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
