"""Caption throughput: winnow's captioner vs open_clip's `CoCa.generate`, same model, images and greedy decoding.

    python bench/caption.py                  # 16 images, model bench-coca-77, torch 1 thread, a few minutes
    python bench/caption.py --full           # 64 images
    python bench/caption.py --threads 2      # on an idle machine

Both sides caption the same images with the same weights to the model's full caption length (context 77: 75
tokens, EOS blocked until then), greedily: open_clip as `generate(generation_type="top_k", top_k=1, seq_len=77,
min_seq_len=76, fixed_output_length=True)`, winnow as `Captioner` with `strategy: greedy, min_length: 75`. The
tokens must be identical; captions/s counts image encoding and decoding, not imports or model loading.

open_clip's side runs in its own virtualenv under bench/out/ (made on the first run, then reused): open_clip 3.3
imports its generation code from transformers and, with transformers 4.57 or 5 (`BeamSearchScorer` is no longer
where it looks), leaves `generate` disabled, so that venv pins `transformers<4.56` (4.55.4 works) beside the main
venv's torch and torchvision versions. Each side runs as a
fresh process with the same torch thread count: 1 by default, because on 2 cores shared with other work two torch
threads wait on each other at every small op (a decode step is many small ops: 10x slower measured at load 6).

The model (`bench-coca-77`: ViT 64 px / patch 16 / width 256 / 4 layers with a 256-query attentional pooler,
text tower and decoder width 256 / 4 layers / context 77, CLIP's 49,408-token vocabulary, random weights) has the
shape of a real CoCa at a size 2 CPUs can run. Last line: RESULT caption_vs_open_clip=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

BENCH_MODEL = "bench-coca-77"
BENCH_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "head_width": 64, "patch_size": 16,
                   "attentional_pool": True, "attn_pooler_queries": 256, "attn_pooler_heads": 4,
                   "output_tokens": True},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4,
                       "attn_pooler_heads": 4},
    "custom_text": True,
}
CONTEXT = 77
PEER_VENV = REPO / "bench" / "out" / "caption-peer-venv"


def peer_requirements() -> list[str]:
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            "open_clip_torch==3.3.0", "transformers<4.56"]


def peer_python() -> str:
    """open_clip's virtualenv, made once (a stamp records what it holds) and reused."""
    reqs = peer_requirements()
    py, stamp = PEER_VENV / "bin" / "python", PEER_VENV / "winnow-bench-stamp.json"
    if py.exists() and stamp.exists() and json.loads(stamp.read_text()) == reqs:
        return str(py)
    print(f"making open_clip's virtualenv at {PEER_VENV} ({', '.join(reqs)}); minutes, once", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *reqs], check=True)
    stamp.write_text(json.dumps(reqs))
    return str(py)


def make_inputs(work: Path, n: int) -> None:
    """Model config, random weights (both sides load the file), uint8 crops and their normalised tensor."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from filtering.preprocess import DEFAULT_PREPROCESS, normalize_batch
    from pipeline.core.model_configs import random_init_expected

    cfg = work / f"{BENCH_MODEL}.json"
    cfg.write_text(json.dumps(BENCH_CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    with random_init_expected():  # random weights are the point here
        model = open_clip.create_model(BENCH_MODEL)
    dec = model.text_decoder  # open_clip 3.3 leaves it as torch.empty on random init
    torch.nn.init.normal_(dec.text_projection, std=dec.width ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "weights.safetensors"))
    rng = np.random.default_rng(0)
    side = BENCH_CONFIG["vision_cfg"]["image_size"]
    pixels = np.stack([np.asarray(Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8"))
                                  .resize((side, side), Image.BICUBIC)) for _ in range(n)])
    np.save(work / "pixels.npy", pixels)
    mean, std = torch.tensor(DEFAULT_PREPROCESS["mean"]), torch.tensor(DEFAULT_PREPROCESS["std"])
    torch.save(normalize_batch(torch.from_numpy(pixels), mean, std), work / "images.pt")


def run_open_clip(work: Path, threads: int, batch: int) -> dict:
    """(In open_clip's venv) greedy CoCa.generate to the full length; tokens and seconds."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    open_clip.add_model_config(work / f"{BENCH_MODEL}.json")
    model = open_clip.create_model(BENCH_MODEL)
    model.load_state_dict(load_file(str(work / "weights.safetensors")), strict=True)
    model.eval()
    images = torch.load(work / "images.pt", weights_only=True)
    kw = dict(generation_type="top_k", top_k=1, seq_len=CONTEXT, min_seq_len=CONTEXT - 1, fixed_output_length=True)
    with torch.no_grad():
        model.generate(images[:2], **kw)  # warm-up
        t0 = time.perf_counter()
        out = torch.cat([model.generate(images[i:i + batch], **kw) for i in range(0, len(images), batch)])
        seconds = time.perf_counter() - t0
    eos_last = bool((out[:, -1] == 49407).all())
    return {"tokens": out[:, 1:-1].tolist(), "seconds": seconds, "eos_last": eos_last}


def run_winnow(work: Path, threads: int, batch: int) -> dict:
    import numpy as np
    import torch

    from filtering.captioner import Captioner

    spec = {"name": BENCH_MODEL, "weights": str(work / "weights.safetensors"),
            "config_file": str(work / f"{BENCH_MODEL}.json")}
    cap = Captioner(spec, {"strategy": "greedy", "min_length": CONTEXT - 2, "batch_size": batch, "device": "cpu"},
                    num_threads=threads)
    pixels = np.load(work / "pixels.npy")
    with torch.no_grad():
        cap.generate(pixels[:2])  # warm-up
        t0 = time.perf_counter()
        seqs = cap.generate(pixels)
        seconds = time.perf_counter() - t0
    return {"tokens": [s[0].tokens for s in seqs], "seconds": seconds}


def run_side(python: str, side: str, work: Path, args) -> dict:
    cmd = [python, __file__, "--side", side, "--workdir", str(work), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="64 images instead of 16")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    ap.add_argument("--workdir", default=None, help="default: bench/out/caption")
    ap.add_argument("--side", choices=["open_clip", "winnow"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir or REPO / "bench" / "out" / "caption")
    if args.side:
        run = run_open_clip if args.side == "open_clip" else run_winnow
        print(json.dumps(run(work, args.threads, args.batch_size)))
        return
    n = args.images or (64 if args.full else 16)
    work.mkdir(parents=True, exist_ok=True)
    peer = peer_python()
    make_inputs(work, n)
    theirs = run_side(peer, "open_clip", work, args)
    ours = run_side(sys.executable, "winnow", work, args)
    same = sum(a == b for a, b in zip(theirs["tokens"], ours["tokens"], strict=True))
    length = CONTEXT - 2
    assert all(len(t) == length for t in theirs["tokens"] + ours["tokens"]), "both sides run to the full length"
    cps_theirs, cps_ours = n / theirs["seconds"], n / ours["seconds"]
    ratio = cps_ours / cps_theirs
    print(f"\ncaption throughput: {n} images, {BENCH_MODEL} (random weights), greedy, {length} tokens each, "
          f"batch {args.batch_size}, torch threads {args.threads}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  open_clip 3.3 CoCa.generate (full prefix each step)  {cps_theirs:8.2f} captions/s  "
          f"({theirs['seconds']:.1f}s)")
    print(f"  winnow Captioner (key/value caches)                 {cps_ours:8.2f} captions/s  "
          f"({ours['seconds']:.1f}s)")
    print(f"  identical greedy tokens: {same}/{n} captions; open_clip ended every caption with EOS: "
          f"{theirs['eos_last']}")
    print(f"  winnow / open_clip = {ratio:.2f}")
    if same != n:
        print(f"tokens differ in {n - same} captions: the ratio does not count")
        print(result_line("caption_vs_open_clip", 0.0, ">=", 3.0))
        sys.exit(1)
    print(result_line("caption_vs_open_clip", ratio, ">=", 3.0))


if __name__ == "__main__":
    main()
