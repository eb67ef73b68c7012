"""Score throughput: the score stage (Ray Data read tasks + a model actor) vs a plain single-process loop.

    python bench/score.py                                  # 8,000 images (16 shards of 500), 2 CPUs
    python bench/score.py --full                           # 32,000 images
    python bench/score.py --model ViT-B-32 --images 512    # a real-size model: on CPU the model is everything

A second table (skip it with --no-512) scores 512 px shards (a quarter as many images) with a 224 px model
(`bench-clip-s224`, patch 32), the stage twice: the perceptual hash from the full decode (the default, exact) and
from the reduced decode the model's crop comes from (`phash_decode: reduced`: one decode at 1/2 scale per image).

Both sides do the same work on the same shards with the same code: read the tar, decode, compute every signal
(sizes, hashes, caption flags), resize/crop, run the model on batches, and write `signals/*.parquet` plus
`embeddings/*.npy`. The loop is what a user writes first: one process, torch with all allowed cores (and, as the
better of two, with 1 thread). The stage runs on a local Ray of `--cpus` CPUs already started (a cluster is up
before jobs reach it; its start-up is printed apart). Each side runs as a fresh process and its wall time counts
imports and model loading. Both run at Ray's worker niceness (15), so that on a shared machine the two sides
compete for CPU on equal terms. Also measured: the model's forward throughput on pre-decoded batches with the
stage actor's threads, so `stage / forward` says whether data handling holds the model back.

The default model (`bench-clip-s64`: ViT 64 px / patch 16 / width 256 / 4 layers, random weights) is sized so a
1-thread forward costs about what decoding an image costs: the regime where the data path decides throughput (as
for a GPU scorer). Last line: RESULT score_stage_vs_loop=...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

BENCH_MODEL = "bench-clip-s64"
BENCH_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
# The second table's model: 224 px input (patch 32: 49 tokens, so its forward stays near the 64 px model's)
BENCH_MODEL_224 = "bench-clip-s224"
BENCH_CONFIGS = {BENCH_MODEL: BENCH_CONFIG, BENCH_MODEL_224: {
    **BENCH_CONFIG, "vision_cfg": {**BENCH_CONFIG["vision_cfg"], "image_size": 224, "patch_size": 32}}}
WORDS = "red blue green small large old new wooden metal glass dog cat car house tree boat bird chair lamp".split()


def make_pool(root: Path, images: int, shard_size: int, side: int = 256) -> None:
    """Download-stage-shaped shards of `side`-px JPEGs (textured colour fields, ~25 KB each) with captions."""
    import numpy as np
    from PIL import Image

    from pipeline.core.ids import uid_of
    from pipeline.core.layout import Dataset, file_record
    from pipeline.core.shards import write_tar

    rng = np.random.default_rng(0)
    ds = Dataset(str(root), "pool")
    for s in range((images + shard_size - 1) // shard_size):
        samples = []
        for i in range(s * shard_size, min(images, (s + 1) * shard_size)):
            grid = Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")).resize((side, side))
            pix = np.asarray(grid, dtype=np.float32) + rng.normal(0, 12, (side, side, 3))
            buf = io.BytesIO()
            Image.fromarray(pix.clip(0, 255).astype("uint8")).save(buf, format="JPEG", quality=90)
            url = f"http://bench.test/{i}.jpg"
            caption = " ".join(rng.choice(WORDS, size=6))
            meta = {"uid": uid_of(url), "url": url, "caption": caption, "status": "success"}
            samples.append((f"{i:09d}", {"jpg": buf.getvalue(), "txt": caption.encode(),
                                         "json": json.dumps(meta).encode()}))
        shard = f"{s:05d}"
        write_tar(ds.shard_file(shard, "tar"), samples)
        ds.write_marker(shard, {"samples": len(samples), "ok": len(samples), "reasons": {},
                                "files": {f"shards/{shard}.tar": file_record(ds.fs, ds.shard_file(shard, "tar"))}})


def model_spec(name: str, workdir: Path) -> dict:
    if name not in BENCH_CONFIGS:
        return {"name": name}  # random weights: the compute is the model's, no download needed
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = workdir / f"{name}.json"
    cfg.write_text(json.dumps(BENCH_CONFIGS[name]))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    ckpt = workdir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(name).state_dict().items()}, str(ckpt))
    return {"name": name, "pretrained": str(ckpt), "config_file": str(cfg)}


def forward_throughput(spec: dict, root: Path, threads: int, batch: int, n: int = 512) -> float:
    """Images/s of the model alone on pre-decoded, pre-cropped batches (the same crops the stage feeds it)."""
    import torch

    from filtering.dfn import DFNScorer, ModelSpec
    from filtering.preprocess import Preprocessor
    from filtering.signals import signal_batches
    from pipeline.core.shards import read_samples

    torch.set_num_threads(threads)
    scorer = DFNScorer(ModelSpec(**spec), device="cpu", num_threads=threads)
    pre = Preprocessor(ModelSpec(**spec).preprocess_cfg())
    cols = next(signal_batches(read_samples(str(root / "pool" / "shards" / "00000.tar")), "0", n, preprocess=pre))
    pixels, captions = cols["pixels"], list(cols["caption"])
    scorer.embed(pixels[:batch], captions[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        scorer.embed(pixels[i:i + batch], captions[i:i + batch])
    return len(pixels) / (time.perf_counter() - t0)


def plain_loop(spec: dict, root: Path, threads: int, batch: int, device: str = "cpu") -> tuple[float, int]:
    """The loop a user writes: shard by shard, decode + signals + crop, model on batches, write the same files."""
    import numpy as np
    import torch

    from filtering.dfn import DFNScorer, ModelSpec
    from filtering.preprocess import Preprocessor
    from filtering.signals import signal_batches
    from pipeline.core.layout import Dataset
    from pipeline.core.shards import ReadReport, read_samples
    from pipeline.execution.record import write_done
    from pipeline.stages.score import ScoreConfig, write_scored_shard

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    spec_m = ModelSpec(**spec)
    scorer = DFNScorer(spec_m, device=device, num_threads=threads)
    pre = Preprocessor(spec_m.preprocess_cfg())
    src, out = Dataset(str(root), "pool"), Dataset(str(root), "loop")
    cfg = ScoreConfig(input="loop", model=spec_m)
    n = 0
    for shard in sorted(src.done_shards()):
        report = ReadReport()
        parts = [scorer(b) for b in signal_batches(read_samples(src.shard_file(shard, "tar"), report), shard,
                                                   batch, preprocess=pre)]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        write_done(out, shard, write_scored_shard(out, shard, cols, report.as_dict(), cfg, None), "signals")
        n += len(cols["uid"])
    return n / (time.perf_counter() - t0), n


def score_stage(spec: dict, root: Path, cpus: int, batch: int, address: str,
                phash_decode: str = "full", device: str = "auto") -> tuple[int, dict]:
    from pipeline.pipeline_config import parse_pipeline_config
    from pipeline.stages import score
    from pipeline.stages.context import StageContext

    stage = {"input": "pool", "model": spec, "batch_size": batch, "phash_decode": phash_decode,
             "device": device}  # defaults otherwise
    pc = parse_pipeline_config({"root": str(root), "ray": {"num_cpus": cpus, "address": address},
                                "stages": {"score": stage}}, "bench")
    res = score.run(StageContext(pipeline=pc, stage="score"), pc.stages["score"])
    sec = json.loads((root / "pool" / "manifest.json").read_text())["stages"]["score"]
    return res["samples"], {k: sec.get(k) for k in ("startup_seconds", "time_split", "bottleneck")}


def measure(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    work, spec = Path(args.workdir), json.loads(args.spec)
    if args.measure == "forward":
        print(json.dumps({"ips": forward_throughput(spec, work, args.threads, args.batch_size)}))
    elif args.measure == "loop":
        _, n = plain_loop(spec, work, args.threads, args.batch_size)
        print(json.dumps({"n": n}))
    else:
        n, info = score_stage(spec, work, args.cpus, args.batch_size, args.address, args.phash_decode)
        print(json.dumps({"n": n, **info}))


def run_measure(mode: str, args, work: Path, spec: dict, threads: int = 1, address: str = "",
                niceness: int = 0, phash_decode: str = "full") -> tuple[dict, float]:
    """Run one measurement as a fresh process; (its JSON result, its wall seconds)."""
    import subprocess

    cmd = [sys.executable, __file__, "--measure", mode, "--workdir", str(work), "--spec", json.dumps(spec),
           "--threads", str(threads), "--cpus", str(args.cpus), "--batch-size", str(args.batch_size),
           "--address", address, "--phash-decode", phash_decode]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=(lambda: os.nice(niceness)) if niceness
                         else None, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def compare_scores(root: Path) -> float:
    """Largest |dfn_score| difference between the loop's and the stage's outputs (same model: ~0)."""
    import numpy as np
    import pyarrow.parquet as pq

    def scores(name):
        t = pq.read_table(str(root / name / "signals"), columns=["uid", "dfn_score"]).to_pydict()
        return dict(zip(t["uid"], t["dfn_score"], strict=True))

    a, b = scores("loop"), scores("pool")
    assert set(a) == set(b), "the loop and the stage scored different samples"
    return float(max(abs(np.float64(a[u]) - np.float64(b[u])) for u in a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="32,000 images instead of 8,000")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--model", default=BENCH_MODEL, help="an open_clip model name (random weights) or the default")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for Ray and torch threads of the loop")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    ap.add_argument("--measure", choices=["forward", "loop", "stage"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--address", default="", help=argparse.SUPPRESS)
    ap.add_argument("--phash-decode", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--no-512", action="store_true", help="skip the second table (512 px shards, 224 px model)")
    args = ap.parse_args()
    if args.measure:
        return measure(args)
    images = args.images or (32000 if args.full else 8000)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="winnow-bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        import ray

        from pipeline.runtime import RayConfig, init_ray

        t0 = time.perf_counter()
        init_ray(RayConfig(num_cpus=args.cpus, object_store_mb=1024))
        ray_start = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        print(f"ray start-up (not counted): {ray_start:.1f}s", flush=True)
        vs_fwd, vs_loop = compare(args, work / "s256", images, 256, args.model, ["full"], address)
        if not args.no_512 and args.model == BENCH_MODEL:
            compare(args, work / "s512", images // 4, 512, BENCH_MODEL_224, ["full", "reduced"], address)
        print(result_line("score_stage_vs_forward", vs_fwd, ">=", 0.9))
        print(result_line("score_stage_vs_loop", vs_loop, ">=", 1.3))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        try:
            import ray

            ray.shutdown()
        except ImportError:
            pass


def compare(args, work: Path, images: int, side: int, model: str, phash_modes: list[str],
            address: str) -> tuple[float, float]:
    """One table: forward alone, the plain loop (2 and 1 threads), the stage (per phash mode) on `side`-px shards;
    returns (first stage / forward, first stage / loop)."""
    work.mkdir(parents=True, exist_ok=True)
    nice = 15  # Ray starts its workers at niceness 15 (RAY_worker_niceness); the loop gets the same
    t0 = time.perf_counter()
    make_pool(work, images, args.shard_size, side=side)
    spec = model_spec(model, work)
    print(f"\nmade {images} images of {side} px in {time.perf_counter() - t0:.1f}s", flush=True)
    fwd1 = run_measure("forward", args, work, spec, threads=1, niceness=nice)[0]["ips"]
    fwd_all = run_measure("forward", args, work, spec, threads=args.cpus, niceness=nice)[0]["ips"]
    res, wall_all = run_measure("loop", args, work, spec, threads=args.cpus, niceness=nice)
    shutil.rmtree(work / "loop")
    _, wall_one = run_measure("loop", args, work, spec, threads=1, niceness=nice)
    n_loop = res["n"]
    loop_all, loop_one = n_loop / wall_all, n_loop / wall_one
    loop_ips = max(loop_all, loop_one)
    print(f"loop: {loop_all:.1f} images/s ({args.cpus} threads), {loop_one:.1f} (1 thread)", flush=True)
    stages = []
    for mode in phash_modes:
        res, wall_stage = run_measure("stage", args, work, spec, address=address, niceness=nice, phash_decode=mode)
        stages.append((mode, res, wall_stage, compare_scores(work)))
        assert res["n"] == n_loop == images
    actors = 1  # the stage's default pool on this many CPUs: one actor, one CPU left for reads
    from pipeline.core.timing import TimeSplit

    print(f"\nscore throughput: {images} images of {side} px ({model}), {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}")
    rows = [(f"plain loop (1 process, torch {args.cpus} threads)", loop_all),
            ("plain loop (1 process, torch 1 thread)", loop_one)]
    for mode, _, wall, _ in stages:
        rows.append((f"score stage, phash from the {mode} decode", images / wall))
    rows += [("model forward alone, 1 thread (the actor's)", fwd1), (f"model forward alone, {args.cpus} threads",
                                                                      fwd_all)]
    for name, v in rows:
        print(f"  {name:<48} {v:>8.1f} images/s")
    for mode, res, wall, diff in stages:
        ips = images / wall
        print(f"  stage ({mode} phash): / loop = {ips / loop_ips:.2f}; / forward (actor threads) = "
              f"{ips / (fwd1 * actors):.2f}; start-up {res['startup_seconds']:.1f}s (counted); max |dfn_score| loop "
              f"vs stage {diff:.2e}")
        print(f"    time split: {TimeSplit(res['time_split']).text()}")
    first = images / stages[0][2]
    return first / (fwd1 * actors), first / loop_ips


if __name__ == "__main__":
    main()
