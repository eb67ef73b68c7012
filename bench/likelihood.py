"""Held-out bits/dim, Frechet distance and sampling speed of every generator family on the same 8-bit data, each
trained for the same wall-clock budget, on both synthetic worlds.

    python bench/likelihood.py                  # 16 px, 60 s of training per family, both worlds (~20 min on 2 cores)
    python bench/likelihood.py --full           # 240 s per family, 64 images of bits/dim, 512 of Frechet distance
    python bench/likelihood.py --worlds objects --budget 30
    python bench/likelihood.py --worlds fashion   # real photos: train split to train, test split to test

Per world: 3,000 training and 600 held-out images of the synthetic web's renderer (`synthetic.world`), a tiny CLIP
trained on the training images (100 steps) that conditions the diffusion model and gives the Frechet features. Each
family is the task the train-diffusion stage builds (`pipeline.stages.train_diffusion.make_task`), trained
in-process on one torch thread: NICE, RealNVP and Glow (2 levels x 4 steps, hidden 64, hashed-caption-word
conditioning, [-1, 1] scaling) and a rectified-flow MMDiT (4 layers x 128, patch 2, the CLIP's text tower). The
budget is wall clock: a short calibration run measures each family's step rate, and the real run takes the steps
that fit the budget (the seconds it really took are printed).
Scores, on the same held-out images: bits/dim of the first `--bpd-images` (16) given their captions (flows: the exact
change of variables; diffusion: the probability-flow ODE, Hutchinson with 1 probe, dopri5 rtol = atol = 1e-5; the
dequantisation and scaling log-dets counted, the same dequantisation noise for all), the Frechet distance of one
sample per held-out caption against 256 real images (flows at temperature 0.7; diffusion Heun, 18 levels, no
guidance), and samples/s of that generation. "train s" is the wall time of the whole run (start-up, loader
processes and the export included).
Last line: RESULT glow_over_nice_bits_per_dim=<mean over worlds> target<=1.0 (Glow's actnorm, 1x1 convolutions
and affine couplings buy likelihood over NICE's additive couplings at the same budget).
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
sys.path.insert(0, str(REPO / "tests"))  # the CLIP helper lives with the tests

from bench.common import machine, require_world, result_line  # noqa: E402

RESOLUTION, BATCH = 16, 32
FLOW = {"levels": 2, "steps_per_level": 4, "hidden": 64, "conditioning": "text"}
MMDIT = {"kind": "mmdit", "layers": 4, "heads": 4, "head_dim": 32, "patch_size": 2}
FAMILIES = ("nice", "realnvp", "glow", "rectified flow")


def write_world(world: str, root: str, train: int, test: int) -> tuple[list[str], str, str]:
    """(training shards, held-out shard pattern, classnames.json) of `world`, rendered straight to shards."""
    from pipeline.synthetic.testset import labelled_samples, write_test_set
    from pipeline.synthetic.worlds import get_world

    w = get_world(world)
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    # the fashion world trains on its train split's photos and tests on its test split's; a rendered world on seeds
    names = write_test_set(labelled_samples(0, train, 48, 128, w, "train"), train_dir, w.classnames(),
                           w.class_templates)
    write_test_set(labelled_samples(1, test, 48, 128, w), test_dir, w.classnames(), w.class_templates)
    return ([os.path.join(train_dir, n) for n in names], os.path.join(test_dir, "*.tar"),
            os.path.join(test_dir, "classnames.json"))


def train_config(family: str, steps: int, encoder):
    from training.generative.diffusion.config import DiffusionTrainConfig

    body = {"steps": steps, "log_every": max(1, min(10, steps // 3)), "checkpoint_every": steps, "precision": "fp32",
            "optim": {"lr": 2e-3 if family != "rectified flow" else 1e-3, "warmup_steps": min(20, steps // 4)},
            "data": {"resolution": RESOLUTION, "batch_size": BATCH, "loader_workers": 1, "shuffle_buffer": 1000},
            "ema": {"halflife_samples": 5000}, "eval": {"likelihood": {"samples": 0}, "synthetic_test": False},
            "sample": {"sampler": {"method": "heun", "steps": 18, "guidance": 1.0}, "prompts": ["a red circle"],
                       "seeds_per_prompt": 1},
            "scaling": {"num_workers": 0, "torch_threads": 1}}
    if family == "rectified flow":
        body |= {"model": MMDIT, "diffusion": {"family": "flow"}, "encoder": encoder.model_dump()}
    else:
        body |= {"model": {"kind": family, **FLOW}, "flow": {"temperature": 0.7}}
    return DiffusionTrainConfig.model_validate(body)


def train(family: str, shards: list[str], encoder, budget: float, out: str) -> dict:
    """Calibrate the step rate, then train for the steps that fit `budget` seconds; {steps, seconds, loss}."""
    from pipeline.stages.train_diffusion import make_task
    from training.engine import fit

    calib = train_config(family, 15, encoder)
    fit(make_task(calib, shards, family), calib, out + "-calibration")
    with open(os.path.join(out + "-calibration", "metrics.csv")) as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
    rate = max(rates[1:] or rates) / BATCH  # steps/s past the first window (start-up)
    steps = max(20, int(budget * rate))
    cfg = train_config(family, steps, encoder)
    t0 = time.perf_counter()
    result = fit(make_task(cfg, shards, family), cfg, out)
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss": result["metrics"].get("loss"), "cfg": cfg}


def score(family: str, out: str, cfg, heldout: str, encoder, bpd_images: int, fd_images: int) -> dict:
    from training.generative.config import GenerativeEvalConfig
    from training.generative.evaluation import evaluate_generator, frechet, likelihood

    ev = GenerativeEvalConfig(heldout=heldout, features=encoder, frechet_samples=fd_images, synthetic_test=False,
                              batch_size=64, likelihood={"samples": bpd_images, "batch_size": 16})
    if family == "rectified flow":
        from training.generative.diffusion.generate import load_generator

        gen = load_generator(out, encoder)
        images, density = (lambda p, s: gen.images(p, s, cfg.sample.sampler)), gen.density(ev.likelihood)
    else:
        from training.generative.flows.generate import load_flow_generator

        gen = load_flow_generator(out, cfg.flow.temperature)
        images, density = gen.images, gen
    spent = {"seconds": 0.0, "images": 0}

    def timed(prompts, seeds):
        t0 = time.perf_counter()
        x = images(prompts, seeds)
        spent["seconds"] += time.perf_counter() - t0
        spent["images"] += len(x)
        return x

    res = evaluate_generator(timed, ev, RESOLUTION, metrics={"frechet": frechet, "likelihood": likelihood},
                             density=density)
    return {"bpd": res["likelihood"]["bits_per_dim"], "bpd_sem": res["likelihood"]["bits_per_dim_sem"],
            "bpd_seconds": res["likelihood"]["seconds"], "fd": res["frechet"]["fd"],
            "fd_floor": res["frechet"]["fd_real_halves"], "samples_per_s": spent["images"] / spent["seconds"]}


def run_world(world: str, work: str, args) -> dict:
    import torch
    from training_diffusion import ENCODER, train_clip

    from training.generative.config import EncoderRef

    torch.set_num_threads(1)
    shards, heldout, _ = write_world(world, os.path.join(work, world), args.train_images, 600)
    clip = EncoderRef(name=ENCODER, weights=train_clip(shards, os.path.join(work, world, "clip"), args.clip_steps,
                                                       seed=1),
                      source="a tiny CLIP trained on the training images")
    rows = {}
    for family in FAMILIES:
        out = os.path.join(work, world, family.replace(" ", "_"))
        trained = train(family, shards, clip, args.budget, out)
        cfg = trained.pop("cfg")
        rows[family] = {**trained, **score(family, out, cfg, heldout, clip, args.bpd_images, args.fd_images)}
        r = rows[family]
        print(f"  {world:8s} {family:15s} {r['steps']:5d} steps in {r['seconds']:5.0f} s  bits/dim {r['bpd']:.3f} "
              f"+- {r['bpd_sem']:.3f} ({r['bpd_seconds']:.0f} s)  FD {r['fd']:.4f} (floor {r['fd_floor']:.4f})  "
              f"{r['samples_per_s']:7.1f} samples/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="240 s per family, 64 bits/dim images, 512 FD images")
    ap.add_argument("--budget", type=float, default=None, help="training seconds per family (default 60)")
    ap.add_argument("--worlds", nargs="+", default=["shapes", "objects"], choices=["shapes", "objects", "fashion"],
                    help="fashion: real grey photos (needs `make fashion-data`)")
    ap.add_argument("--bpd-images", type=int, default=None, help="held-out images scored in bits/dim (default 16)")
    ap.add_argument("--fd-images", type=int, default=None, help="generated and real images of the FD (default 256)")
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--clip-steps", type=int, default=100, help="steps of the CLIP that conditions and gives features")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    args.budget = args.budget or (240.0 if args.full else 60.0)
    args.bpd_images = args.bpd_images or (64 if args.full else 16)
    args.fd_images = args.fd_images or (512 if args.full else 256)

    for world in args.worlds:
        require_world(world)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-likelihood-")
    print(f"machine: {machine()}")
    print(f"{RESOLUTION} px, batch {BATCH}, {args.budget:.0f} s of training per family, {args.bpd_images} held-out "
          f"images in bits/dim, {args.fd_images} in the Frechet distance", flush=True)
    try:
        results = {world: run_world(world, work, args) for world in args.worlds}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| world | family | steps | train s | bits/dim | FD (real halves) | samples/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for world, rows in results.items():
        for family, r in rows.items():
            print(f"| {world} | {family} | {r['steps']} | {r['seconds']:.0f} | {r['bpd']:.3f} ± {r['bpd_sem']:.3f} | "
                  f"{r['fd']:.4f} ({r['fd_floor']:.4f}) | {r['samples_per_s']:.1f} |")
    ratio = sum(r["glow"]["bpd"] / r["nice"]["bpd"] for r in results.values()) / len(results)
    print(result_line("glow_over_nice_bits_per_dim", ratio, "<=", 1.0))


if __name__ == "__main__":
    main()
