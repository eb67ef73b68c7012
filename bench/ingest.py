"""Ingest in place: winnow's ingest stage over N webdataset shards vs a plain `webdataset` read loop over the same
shards, same run.

    python bench/ingest.py            # 8 shards x 1,000 samples, 256 px JPEGs (about 170 MB), a few minutes
    python bench/ingest.py --full     # 32 shards x 2,500 samples

The shards are DataComp-style (`{key}.jpg/.txt/.json` with the uid in the JSON, a parquet beside each tar). The
peer is what a user writes to look at such a pool: `webdataset.WebDataset(urls)`, decode every image with PIL, read
the caption and the JSON, in one process (and, for reference, the same loop split over the shards in as many
processes as winnow has CPUs). winnow ingests the same shards in place on an already started local Ray (start-up
printed separately): every image decoded through the one capped reader and decoder, a uid and a verdict per sample,
winnow's parquet per shard, the tar's sha256 on the way; no image byte written. Both read warm files (a first pass
reads every file once). Also reported: the pool's size on disk against the source's.
Last line: RESULT ingest_vs_webdataset_loop=... target>=0.9
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import end_embedded_run, machine, result_line  # noqa: E402


def photo_jpeg(i: int, side: int) -> bytes:
    """A 256 px JPEG that weighs what a web photo does (~25-40 KB): a smooth field with fine noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    base = np.asarray(Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((side, side),
                                                                                               Image.BICUBIC))
    pixels = np.clip(base.astype(np.int16) + rng.integers(-24, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_pool(folder: Path, shards: int, per_shard: int, side: int) -> list[str]:
    """The DataComp-style source (reused from an earlier run with the same sizes, in a kept `--workdir`)."""
    from ingest_testdata import write_datacomp_shards

    from pipeline.core.ids import uid_of

    stamp = folder / "made.json"
    if stamp.exists() and json.loads(stamp.read_text()) == [shards, per_shard, side]:
        return [str(folder / f"{s:08d}.tar") for s in range(shards)]
    shutil.rmtree(folder, ignore_errors=True)
    parts = []
    for s in range(shards):
        part = []
        for i in range(per_shard):
            url = f"http://bench.test/{s}/{i}.jpg"
            part.append({"image": photo_jpeg(s * per_shard + i, side), "caption": f"a photo of item {i} in set {s}",
                         "url": url, "uid": uid_of(url)})
        parts.append(part)
    tars = [str(p) for p in write_datacomp_shards(folder, parts)]
    stamp.write_text(json.dumps([shards, per_shard, side]))
    return tars


def read_loop(urls: list[str]) -> int:
    """The user's loop: webdataset's reader, PIL decode, caption and JSON read; returns the samples seen."""
    import webdataset as wds
    from PIL import Image

    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        caption = sample["txt"].decode("utf-8")
        meta = json.loads(sample["json"])
        n += bool(image.size and caption is not None and meta)
    return n


def loop_split(urls: list[str], processes: int) -> int:
    with ProcessPoolExecutor(processes) as pool:
        return sum(pool.map(read_loop, [urls[i::processes] for i in range(processes)]))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="32 shards x 2,500 samples")
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--per-shard", type=int, default=None)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs (and processes of the split loop)")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    shards = args.shards or (32 if args.full else 8)
    per_shard = args.per_shard or (2500 if args.full else 1000)
    for var, value in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("TQDM_DISABLE", "1"), ("RAY_DATA_DISABLE_PROGRESS_BARS",
                                                                                  "1")):
        os.environ.setdefault(var, value)
    os.environ.pop("RAY_ADDRESS", None)
    # Ray's workers import winnow from this checkout (as the driver does), whatever the venv has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    print(f"machine: {machine()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    shutil.rmtree(work / "run", ignore_errors=True)
    t0 = time.perf_counter()
    urls = make_pool(work / "pool", shards, per_shard, args.side)
    n = shards * per_shard
    src_bytes = sum(Path(u).stat().st_size + Path(u[:-4] + ".parquet").stat().st_size for u in urls)
    print(f"source: {shards} shards x {per_shard} samples, {args.side} px, {src_bytes / 1e6:.1f} MB "
          f"(made in {time.perf_counter() - t0:.1f}s)")
    for url in urls:  # warm: both sides read files from the page cache
        Path(url).read_bytes()

    from pipeline.cli.run import run_pipeline
    from pipeline.pipeline_config import parse_pipeline_config
    from pipeline.runtime import RayConfig, init_ray

    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=args.cpus, object_store_mb=512))
    ray_start = time.perf_counter() - t0

    rates = {}
    t0 = time.perf_counter()
    seen = read_loop(urls)
    rates["loop"] = seen / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    seen_split = loop_split(urls, args.cpus)
    rates["loop_split"] = seen_split / (time.perf_counter() - t0)
    cfg = parse_pipeline_config({"name": "bench-ingest", "root": str(work / "run"), "ray": {"num_cpus": args.cpus},
                                 "stages": {"ingest": {"output": "pool", "source": {
                                     "kind": "webdataset", "shards": str(work / "pool" / "*.tar")}}}}, "bench")
    t0 = time.perf_counter()
    res = run_pipeline(cfg, "ingest")["ingest"]
    rates["ingest"] = res["samples"] / (time.perf_counter() - t0)
    pool_bytes = folder_bytes(work / "run" / "pool")
    assert seen == seen_split == res["samples"] == res["ok"] == n, (seen, seen_split, res["samples"], res["ok"])

    ratio = rates["ingest"] / rates["loop"]
    print(f"\nRay start-up (not counted): {ray_start:.1f}s")
    print("| side | samples | samples/s |\n|---|---|---|")
    print(f"| webdataset loop, 1 process (PIL decode, caption, JSON) | {seen} | {rates['loop']:.1f} |")
    print(f"| webdataset loop, {args.cpus} processes (shards split) | {seen_split} | {rates['loop_split']:.1f} |")
    print(f"| **winnow ingest in place** ({args.cpus} CPUs) | {res['samples']} | **{rates['ingest']:.1f}** |")
    print(f"\npool on disk: {pool_bytes / 1e6:.2f} MB for {src_bytes / 1e6:.1f} MB of source "
          f"({pool_bytes / src_bytes:.2%}); ingest vs 1-process loop {ratio:.2f}x, vs {args.cpus}-process loop "
          f"{rates['ingest'] / rates['loop_split']:.2f}x; load average after "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    end_embedded_run(work, keep=bool(args.workdir))
    print(result_line("ingest_vs_webdataset_loop", ratio, ">=", 0.9))


if __name__ == "__main__":
    main()
