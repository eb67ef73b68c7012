"""Download throughput: winnow's download stage vs the img2dataset CLI, same URLs, same processes and threads.

    python bench/download.py            # 5,000 images from the loopback synthetic web
    python bench/download.py --full     # 20,000 images

Both download the same URL list (the synthetic web, rewritten to the live loopback server, no faults) into
webdataset shards with the same resize settings. img2dataset runs its multiprocessing distributor in a subprocess
(as a user runs it); winnow runs the download stage on an already started local Ray (a cluster is up before jobs
are submitted to it; the Ray start-up time is printed separately). Last line: RESULT download_vs_img2dataset=...
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
    ap.add_argument("--full", action="store_true", help="20,000 images instead of 5,000")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    n = args.images or (20_000 if args.full else 5_000)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.pop("RAY_ADDRESS", None)

    from pipeline.synthetic.config import SyntheticWebConfig
    from pipeline.synthetic.server import rewrite_urls, serve_web
    from pipeline.synthetic.web import build_web

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-download-"))
    web_dir = work / "web"
    t0 = time.perf_counter()
    web = SyntheticWebConfig(dir=str(web_dir), pool_size=n, hq_size=0, test_size=0, faults=NO_FAULTS)
    build_web(web, str(web_dir))
    print(f"synthetic web: {n} images in {time.perf_counter() - t0:.1f}s")
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
    print(f"open_clip_train.main on winnow's shards: {peer}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(result_line("download_vs_img2dataset", ratio, ">=", 0.9))


if __name__ == "__main__":
    main()
