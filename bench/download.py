"""Download throughput: winnow's download stage vs the img2dataset CLI, same URLs, same processes and threads.

    python bench/download.py                  # 5,000 images of 512-1024 px from the loopback synthetic web
    python bench/download.py --full           # 50,000 images
    python bench/download.py --sides 48-128   # the synthetic web's own small images (the bench before 2026-12-07)

Both download the same URL list (the synthetic web, rewritten to the live loopback server, no faults) into
webdataset shards with the same resize settings (64 px center crop). The web serves what the web serves: JPEGs of
512-1024 px (1,000 distinct renders of the `shapes` world, each behind many URLs, so that 50,000 need not be
drawn). img2dataset runs its multiprocessing distributor in a subprocess and winnow its CLI (`python -m pipeline
run`), each as a user runs it, cold: imports and, for winnow, Ray's start-up included. winnow's stage prints its own
start-up and time split. Last line: RESULT download_vs_img2dataset=... (target 1.0x at 5,000, 1.3x at 50,000)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

NO_FAULTS = {k: 0.0 for k in ("http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out")}
NO_NOISE = {k: 0.0 for k in ("mismatched_caption", "generic_caption", "junk_image", "exact_duplicate",
                             "near_duplicate", "tiny_image")}
DISTINCT = 1000  # renders behind the URLs of a large-image web


def build_bench_web(web_dir: Path, n: int, sides: tuple[int, int]) -> None:
    """The synthetic web with `n` URLs: the web's own images (small sides: `n` renders), or `DISTINCT` renders of
    `sides` px, each served under n / DISTINCT URLs (the server routes by the truth table's url -> path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.synthetic.config import SyntheticWebConfig
    from pipeline.synthetic.web import build_web

    distinct = n if sides[1] <= 128 else min(n, DISTINCT)
    web = SyntheticWebConfig(dir=str(web_dir), pool_size=distinct, hq_size=0, test_size=0, faults=NO_FAULTS,
                             noise=NO_NOISE, min_side=sides[0], max_side=sides[1])
    build_web(web, str(web_dir))
    if distinct == n:
        return
    truth = pq.read_table(web_dir / "truth.parquet", columns=["url", "fault", "path", "caption"]).to_pydict()
    rows = {"url": [], "fault": [], "path": [], "caption": []}
    for i in range(n):
        j = i % distinct
        base, name = truth["url"][j].rsplit("/", 1)
        rows["url"].append(f"{base}/{i:07d}-{name}")
        for k in ("fault", "path", "caption"):
            rows[k].append(truth[k][j])
    pq.write_table(pa.table(rows), web_dir / "truth.parquet")
    pq.write_table(pa.table({"url": rows["url"], "caption": rows["caption"]}), web_dir / "pool.parquet")


PEER = ("import sys; from pipeline.core.model_configs import register_model_configs; register_model_configs(); "
        "from open_clip_train.main import main; main(sys.argv[1:])")


def open_clip_reads(shards: Path, samples: int, batch: int = 64) -> str:
    """Train a tiny model for one epoch over the download shards with open_clip_train.main; return its last log."""
    import re

    tars = sorted(shards.glob("*.tar"))
    pattern = str(shards / f"{{00000..{len(tars) - 1:05d}}}.tar")
    args = ["--train-data", pattern, "--train-num-samples", str(samples // batch * batch), "--dataset-type",
            "webdataset", "--model", "tiny-sigmoid-vit", "--siglip", "--batch-size", str(batch), "--workers", "1",
            "--epochs", "1", "--precision", "fp32", "--save-frequency", "0", "--report-to", "", "--device", "cpu",
            "--logs", str(shards.parent / "open_clip_logs"), "--name", "read-check", "--log-every-n-steps", "20"]
    proc = subprocess.run([sys.executable, "-c", PEER, *args], capture_output=True, text=True, cwd=REPO)
    log = proc.stdout + proc.stderr
    steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)
    if proc.returncode != 0 or not steps:
        raise RuntimeError(f"open_clip_train.main could not train on winnow's shards:\n{log[-3000:]}")
    losses = re.findall(r"Loss: ([0-9.]+)", log)
    return f"read {steps[-1][0]}/{steps[-1][1]} samples in one epoch, loss {losses[0]} -> {losses[-1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="50,000 images instead of 5,000")
    ap.add_argument("--sides", default="512-1024", help="served image sides, px: MIN-MAX")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    n = args.images or (50_000 if args.full else 5_000)
    sides = tuple(int(x) for x in args.sides.split("-"))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.pop("RAY_ADDRESS", None)

    from pipeline.synthetic.server import rewrite_urls, serve_web

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-download-"))
    web_dir = work / "web"
    t0 = time.perf_counter()
    build_bench_web(web_dir, n, sides)
    print(f"synthetic web: {n} URLs of {sides[0]}-{sides[1]} px images in {time.perf_counter() - t0:.1f}s")
    common = {"image_size": 64, "resize_mode": "center_crop", "number_sample_per_shard": args.shard_size,
              "thread_count": args.threads, "timeout": 10, "encode_quality": 95}
    times: dict[str, float] = {}
    counts: dict[str, int] = {}
    with serve_web(str(web_dir), workers=2) as server:
        urls = str(work / "urls.parquet")
        rewrite_urls(str(web_dir / "pool.parquet"), urls, server.base_url)

        # --- img2dataset CLI, multiprocessing distributor -------------------------------------------------------
        out = work / "img2dataset"
        cmd = [sys.executable, "-c", "from img2dataset.main import main; main()", "--url_list", urls,
               "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
               "--output_format", "webdataset", "--output_folder", str(out), "--processes_count",
               str(args.processes), "--enable_wandb", "False", "--distributor", "multiprocessing",
               *[x for k, v in common.items() for x in (f"--{k}", str(v))]]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times["img2dataset"] = time.perf_counter() - t0
        counts["img2dataset"] = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))

        # --- winnow, as a user runs it: the CLI, cold (Ray start-up included) --------------------------------
        import yaml

        cfg = {"name": "bench", "root": str(work / "winnow"), "ray": {"num_cpus": args.processes},
               "stages": {"download": {"url_list": urls, "output": "pool", "processes": args.processes,
                                       "guard": {"allow": [f"127.0.0.1:{server.port}"]}, **common}}}
        cfg_path = work / "winnow.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg_path)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times["winnow"] = time.perf_counter() - t0
        manifest = json.loads((work / "winnow" / "pool" / "manifest.json").read_text())["stages"]["download"]
        counts["winnow"] = manifest["ok"]
        times["winnow_stage"] = manifest["wall_seconds"]
        stage_info = {k: manifest.get(k) for k in ("startup_seconds", "time_split", "bottleneck")}

    # winnow's shards feed open_clip's own trainer unchanged (`--dataset-type webdataset`).
    peer = open_clip_reads(work / "winnow" / "pool" / "shards", counts["winnow"])

    rate = {k: counts[k] / times[k] for k in ("img2dataset", "winnow")}
    ratio = rate["winnow"] / rate["img2dataset"]
    print(f"\nmachine: {machine()}")
    print(f"images: {n}, processes: {args.processes}, threads: {args.threads}, shard size: {args.shard_size}")
    print(f"{'tool':<14}{'ok images':>10}{'seconds':>10}{'images/s':>10}")
    for k in ("img2dataset", "winnow"):
        print(f"{k:<14}{counts[k]:>10}{times[k]:>10.1f}{rate[k]:>10.0f}")
    print(f"(both timed as CLI commands, start-up included; winnow's stage alone took {times['winnow_stage']:.1f}s "
          f"= {counts['winnow'] / times['winnow_stage']:.0f} images/s)")
    from pipeline.core.timing import TimeSplit

    print(f"winnow's stage: start-up {stage_info['startup_seconds']}s (to its first image); time split (summed over "
          f"shard tasks) {TimeSplit(stage_info['time_split']).text()}; load average {os.getloadavg()[0]:.1f}")
    print(f"open_clip_train.main on winnow's shards: {peer}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(result_line("download_vs_img2dataset", ratio, ">=", 1.3 if n >= 50_000 else 1.0))


if __name__ == "__main__":
    main()
