"""Load: download + score of 10,000 and 50,000 synthetic samples on a local Ray, with memory and cost per sample.

    python bench/load.py              # 10k then 50k samples (small images), about 10 min on 2 cores
    python bench/load.py --sizes 10000 20000

For each size a fresh run root: build the synthetic web, serve it on loopback, run the download stage and the
score stage (signals + a tiny filtering network). Reports wall time per 10k samples for each stage and the peak
RSS of the driver (this process) and of all Ray processes together. Linear cost means the time per 10k samples
at the largest size is close to the smallest size's; bounded memory means the driver's peak does not grow with
the pool (target: under 4 GiB). Last line: RESULT load_cost_ratio_50k_vs_10k=... target<=1.25
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402


class PeakRSS:
    """Samples the RSS of this process and of every Ray process every 0.2 s, keeping the peaks."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.driver = self.ray_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ray_rss(self) -> int:
        import psutil

        total = 0
        for p in self.me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            self.ray_total = max(self.ray_total, self._ray_rss())
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_size(n: int, work: Path) -> dict:
    from pipeline.cli.run import run_pipeline
    from pipeline.pipeline_config import parse_pipeline_config

    root = work / f"n{n}"
    cfg = parse_pipeline_config({
        "name": f"load-{n}", "root": str(root),
        "synthetic": {"dir": str(root / "web"), "pool_size": n, "hq_size": 0, "test_size": 0,
                      "min_side": 32, "max_side": 64,
                      "faults": {"slow": 0.0, "oversized": 0.0}},  # the rest of the default faults stay
        "stages": {
            "download": {"source": "synthetic", "output": "pool", "image_size": 32, "resize_mode": "center_crop",
                         "number_sample_per_shard": 2000, "thread_count": 32, "timeout": 5},
            "score": {"input": "pool", "model": {"name": "tiny-clip-vit"}, "batch_size": 256},
        }}, "load")
    from pipeline.synthetic.web import build_web

    t0 = time.perf_counter()
    build_web(cfg.synthetic, cfg.synthetic_dir())
    built = time.perf_counter() - t0
    out = {"n": n, "web_build_s": built}
    with PeakRSS() as mem:
        for stage in ("download", "score"):
            t0 = time.perf_counter()
            res = run_pipeline(cfg, stage)[stage]
            out[f"{stage}_s"] = time.perf_counter() - t0
            out[f"{stage}_samples"] = res["samples"]
    out["driver_peak_gib"] = mem.driver / 2**30
    out["ray_peak_gib"] = mem.ray_total / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    for k, v in {"NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(k, v)
    os.environ.pop("RAY_ADDRESS", None)

    from pipeline.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=1024))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-load-"))
    results = [run_size(n, work) for n in sorted(args.sizes)]

    print(f"\nmachine: {machine()}")
    header = ["samples", "download s/10k", "score s/10k", "total s/10k", "driver peak RSS", "Ray peak RSS"]
    print(" | ".join(header))
    for r in results:
        per = {s: r[f"{s}_s"] / r["n"] * 10_000 for s in ("download", "score")}
        r["per10k"] = per["download"] + per["score"]
        print(f"{r['n']} | {per['download']:.1f} | {per['score']:.1f} | {r['per10k']:.1f} | "
              f"{r['driver_peak_gib']:.2f} GiB | {r['ray_peak_gib']:.2f} GiB")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    worst_driver = max(r["driver_peak_gib"] for r in results)
    print(f"driver peak RSS {worst_driver:.2f} GiB (target < 4 GiB)")
    ratio = results[-1]["per10k"] / results[0]["per10k"]
    print(result_line(f"load_cost_ratio_{results[-1]['n'] // 1000}k_vs_{results[0]['n'] // 1000}k", ratio, "<=", 1.25))


if __name__ == "__main__":
    main()
