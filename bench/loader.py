"""Training loader throughput on 256 px shards for a 64 px model: the loader as shipped vs the loader before issue 20.

    python bench/loader.py            # 2,048 samples (4 shards x 512), 3 interleaved rounds of 40 batches of 64
    python bench/loader.py --full     # 8 shards, 5 rounds of 80 batches

The same shards (the synthetic web's `shapes` renderer drawn at 256 px, JPEG quality 80-95, a caption each) and the
same loader (`training.data.ShardStream`: the capped tar reader, a shuffle buffer, open_clip's training transform
for a 64 px model - RandomResizedCrop(64, scale 0.9-1), to-tensor, normalise - and open_clip's tokenizer), one
DataLoader worker, batches of 64. "full decode (before)" is the loader as it was before issue 20: tarfile reads the
shard (`read_samples_with_tarfile`), PIL decodes every JPEG whole (`decode_with_pil`, what `open_rgb` did before the
fast path), then open_clip's transform as torchvision runs it. "reduced decode" is the loader as the contrastive task
runs it now: the streaming tar parser (`pipeline.core.tar_stream`), libjpeg-turbo decoding each JPEG at the largest
1/2^k scale whose short side still covers the transform's smallest crop at 64 px (`needed_size`: 78 px, so 256 px
shards decode at 1/2), and open_clip's transform as one crop-box resize with its box drawn in one torch call
(`fast_train_transform`, torchvision's box distribution). Rounds are interleaved; the best of each is reported, as
samples per wall second (1 loader worker) and per CPU second (in-process). The tar readers alone are timed too
(ms of CPU per sample, reading every shard, best of the rounds).
Last line: RESULT loader_reduced_vs_full_decode=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

MODEL = "bench-sigmoid-vit-64"
MODEL_CONFIG = {  # tiny-sigmoid-vit at 64 px: the loader only sees its image size and tokenizer
    "embed_dim": 128, "init_logit_bias": -10,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def make_shards(out: Path, shards: int, per_shard: int, side: int = 256) -> list[str]:
    """Shards of `side`-px renders with captions, in the download stage's layout (jpg, txt, json)."""
    import json

    from pipeline.core.shards import write_tar
    from pipeline.synthetic.testset import labelled_samples
    from pipeline.synthetic.worlds import get_world

    out.mkdir(parents=True, exist_ok=True)
    samples = labelled_samples(0, shards * per_shard, side, side, get_world("shapes"))
    urls = []
    for s in range(shards):
        part = samples[s * per_shard:(s + 1) * per_shard]
        url = str(out / f"{s:05d}.tar")
        write_tar(url, [(x["key"], {"jpg": x["jpg"], "txt": x["caption"].encode(),
                                    "json": json.dumps({"caption": x["caption"]}).encode()}) for x in part])
        urls.append(url)
    return urls


def rate(shards: list[str], full_decode: bool, batch: int, batches: int, workers: int) -> tuple[float, float, int]:
    """(samples per wall second, samples per CPU second of this process, the short side it decoded at) after one
    warm-up batch. CPU seconds are only this process's: meaningful with `workers=0` (the loading runs here), and
    steadier than wall time on a shared machine."""
    import open_clip

    import training.data as data
    from pipeline.core.images import decode_with_pil
    from pipeline.core.shards import read_samples_with_tarfile
    from training.contrastive.data import TokenEncoder, fast_train_transform

    transform = open_clip.image_transform(64, is_train=True)
    if not full_decode:
        transform = fast_train_transform(transform)
    stream = data.ShardStream(shards, transform, TokenEncoder(open_clip.get_tokenizer(MODEL)), shuffle_buffer=1000,
                              decode_size=None if full_decode else "auto")
    if full_decode:  # the loader as it was: tarfile reads, PIL decodes every image whole (workers fork with these)
        saved = data.open_rgb, data.read_samples
        data.open_rgb = lambda b, max_pixels=None, min_size=None: decode_with_pil(b)[1]
        data.read_samples = read_samples_with_tarfile
    try:
        it = iter(data.make_loader(stream, batch, workers=workers))
        next(it)  # worker start-up
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        del it
    finally:
        if full_decode:
            data.open_rgb, data.read_samples = saved
    return batches * batch / seconds, batches * batch / cpu, stream.decode_size


def reader_ms(shards: list[str], with_tarfile: bool) -> float:
    """CPU ms per sample of one tar reader alone, reading every shard."""
    from pipeline.core.shards import read_samples, read_samples_with_tarfile

    read = read_samples_with_tarfile if with_tarfile else read_samples
    c0, n = time.process_time(), 0
    for url in shards:
        n += sum(1 for _ in read(url))
    return (time.process_time() - c0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="8 shards, 5 rounds of 80 batches")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="keep the shards here (default: a temp dir, removed)")
    args = ap.parse_args()
    shards_n, rounds, batches = (8, 5, 80) if args.full else (4, 3, 40)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import json

    import open_clip

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        cfg = work / f"{MODEL}.json"
        cfg.write_text(json.dumps(MODEL_CONFIG))
        open_clip.add_model_config(cfg)
        t0 = time.perf_counter()
        shards = make_shards(work / "shards", shards_n, 512)
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
        print(f"{shards_n} shards x 512 samples of 256 px ({time.perf_counter() - t0:.0f}s to draw), model {MODEL} "
              f"(64 px), batch {args.batch}, 1 loader worker, {rounds} rounds x {batches} batches")
        runs: dict[str, list[float]] = {"full": [], "reduced": [], "full_cpu": [], "reduced_cpu": [], "tarfile_ms": [],
                                        "stream_ms": []}
        for r in range(rounds):  # interleaved, so load from elsewhere on the machine hits both alike
            runs["tarfile_ms"].append(reader_ms(shards, with_tarfile=True))
            runs["stream_ms"].append(reader_ms(shards, with_tarfile=False))
            for name, full_decode in (("full", True), ("reduced", False)):
                wall, _, side = rate(shards, full_decode, args.batch, batches, workers=1)
                _, per_cpu, _ = rate(shards, full_decode, args.batch, batches // 2, workers=0)
                runs[name].append(wall)
                runs[f"{name}_cpu"].append(per_cpu)
                print(f"  round {r + 1}: {name} decode {wall:7.0f} samples/s (1 worker), {per_cpu:7.0f} samples "
                      f"per CPU second (in-process); decoded at short side >= {side or 'full'}", flush=True)
        best = {k: (min if k.endswith("_ms") else max)(v) for k, v in runs.items()}
        print(f"tar reader alone: tarfile {best['tarfile_ms']:.4f} ms/sample, streaming parser "
              f"{best['stream_ms']:.4f} ms/sample ({best['tarfile_ms'] / best['stream_ms']:.1f}x less CPU)")
        print(f"full decode (before)   {best['full']:8.1f} samples/s   {best['full_cpu']:8.1f} samples/CPU-s")
        print(f"reduced decode         {best['reduced']:8.1f} samples/s   {best['reduced_cpu']:8.1f} samples/CPU-s   "
              f"({best['reduced'] / best['full']:.2f}x wall, {best['reduced_cpu'] / best['full_cpu']:.2f}x CPU)")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print(result_line("loader_reduced_vs_full_decode", best["reduced"] / best["full"], ">=", 2.0))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
