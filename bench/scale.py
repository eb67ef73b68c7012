"""Pools the size of DataComp small: filter + reshard planning, status and the report at 1M / 4M / 12.8M rows.

    python bench/scale.py                          # 1M, 4M, 12.8M rows: ~25 min on 2 cores, ~10 GiB disk in /tmp
    python bench/scale.py --sizes 100000 300000    # a smoke run (~1 min)
    python bench/scale.py --workdir /tmp/scale     # keep the pools (re-used by the next run with the same sizes)

Per size, a synthetic scored pool (`bench/scale_pool.py`: signals, no images) is written in winnow's own format and
run through the real code: `winnow run --stage filter` (the basic recipe's ops plus dfn_score top 30%: exact
top-fraction threshold over the whole pool, per-op lineage, exact and phash dedup lists), the reshard stage's plan
(`reshard.plan_output`: the kept uids sorted, shuffled, split into balanced shards, the plan's digest; no tars to
write, the pool has no images), `winnow status` and `winnow report`. Semantic dedup (the filter stage with
`dedup: {method: semantic}` over D=64 embeddings) runs at the sizes up to --semantic-max (4M) and is extrapolated.
Every task runs in its own process (its wall time and peak RSS are its own: `os.wait4`); filter and planning run in
the driver (no Ray tasks), so the driver's peak is the task's peak.

The cost exponent is the slope of log(seconds) over log(rows) between the smallest and the largest size (the
per-pair slopes are printed too). Last lines:
    RESULT scale_filter_plan_seconds=<at the largest size> target<300
    RESULT scale_peak_rss_gib=<filter or plan, at the largest size> target<6
    RESULT scale_cost_exponent=<filter + plan> target<=1.1
    RESULT scale_status_seconds=<largest size> target<10
    RESULT scale_report_seconds=<largest size> target<60
    RESULT scale_report_mb=<HTML size, largest size> target<20
"""

from __future__ import annotations

import argparse
import json
import math
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

PY = sys.executable
RECIPE = """description: basic + top 30% by dfn_score (bench/scale.py)
ops:
  - min_image_side: 32
  - max_aspect_ratio: 3.0
  - min_caption_words: 2
  - drop_generic_captions: true
  - dedup: {method: exact}
  - dedup: {method: phash, max_hamming: 4}
  - dfn_score: {top_fraction: 0.3}
"""
SEMANTIC = """description: semantic dedup only (bench/scale.py)
ops:
  - dedup: {method: semantic, min_cosine: 0.95}
"""


def run_task(cmd: list[str], log: Path) -> dict:
    """Run one task in its own process: wall seconds, its own peak RSS (GiB), exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    # CPU seconds too: on a shared machine they are the steadier figure
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_gib": usage.ru_maxrss / 2**20}


def config(root: Path, dataset: str, recipe: Path) -> Path:
    path = root / f"{dataset}-{recipe.stem}.yaml"
    path.write_text(f"name: scale\nroot: {root}\nray: {{num_cpus: 2}}\nstages:\n"
                    f"  filter: {{kind: filter, input: {dataset}, recipe: {recipe}}}\n"
                    f"  reshard: {{kind: reshard, input: {dataset}, recipe: {recipe.stem}, "
                    "samples_per_shard: 10000}\n")
    return path


def plan_task(cfg_path: str) -> None:
    """The reshard stage's planning alone (run as `--plan CONFIG` in its own process): prints the plan as JSON."""
    from pipeline.pipeline_config import load_pipeline_config
    from pipeline.stages.context import StageContext
    from pipeline.stages.reshard import plan_output

    cfg = load_pipeline_config(cfg_path)
    stage = cfg.stages["reshard"]
    ctx = StageContext(pipeline=cfg, stage="reshard", config_path=cfg_path)
    plan, _, plan_id, sizes = plan_output(ctx.dataset(stage.input), stage)
    counts = list(sizes.values())
    print(json.dumps({"kept": plan.kept.num_rows, "shards": len(plan), "plan": plan_id,
                      "min": min(counts), "max": max(counts)}))


def slope(xs: list[float], ys: list[float]) -> float:
    return (math.log(ys[-1]) - math.log(ys[0])) / (math.log(xs[-1]) - math.log(xs[0]))


def one_size(root: Path, rows: int, semantic: bool) -> dict:
    name = f"pool{rows}"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict = {"rows": rows}
    done = root / name / "manifest.json"
    if not done.exists() or (semantic and not (root / name / "embeddings").exists()):
        shutil.rmtree(root / name, ignore_errors=True)
        out["generate"] = run_task([PY, "bench/scale_pool.py", "--rows", str(rows), "--root", str(root), "--name",
                                    name] + (["--embeddings"] if semantic else []), logs / f"{name}-generate.log")
    recipe = root / "recipe_scale.yaml"
    recipe.write_text(RECIPE)
    cfg = config(root, name, recipe)
    out["filter"] = run_task([PY, "-m", "pipeline", "run", str(cfg), "--stage", "filter"], logs / f"{name}-filter.log")
    out["plan"] = run_task([PY, "bench/scale.py", "--plan", str(cfg)], logs / f"{name}-plan.log")
    out["plan"].update(json.loads((logs / f"{name}-plan.log").read_text().strip().splitlines()[-1]))
    out["status"] = run_task([PY, "-m", "pipeline", "status", str(cfg)], logs / f"{name}-status.log")
    out["report"] = run_task([PY, "-m", "pipeline", "report", str(cfg)], logs / f"{name}-report.log")
    out["report"]["mb"] = (root / name / "report" / "index.html").stat().st_size / 1e6
    info = json.loads((root / name / "selection" / "recipe_scale.json").read_text())
    out["kept"] = info["kept"]
    manifest = json.loads((root / name / "manifest.json").read_text())
    out["filter"]["stage_seconds"] = manifest["stages"]["filter"]["wall_seconds"]  # in-process, no start-up
    return out


def semantic_run(root: Path, rows: int) -> dict:
    sem = root / "recipe_semantic.yaml"
    sem.write_text(SEMANTIC)
    return run_task([PY, "-m", "pipeline", "run", str(config(root, f"pool{rows}", sem)), "--stage", "filter"],
                    root / "logs" / f"pool{rows}-semantic.log")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 12_800_000])
    p.add_argument("--semantic-max", type=int, default=4_000_000, help="largest size semantic dedup runs at")
    p.add_argument("--workdir", default=None, help="keep the pools here (default: a temporary folder, removed)")
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)  # the planning task, in its own process
    args = p.parse_args()
    if args.plan:
        plan_task(args.plan)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="winnow-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load average before: {os.getloadavg()}", flush=True)
    results = []
    try:
        for rows in sorted(args.sizes):
            r = one_size(root, rows, rows <= args.semantic_max)
            results.append(r)
            line = {k: (round(v["seconds"], 1), round(v["peak_gib"], 2)) for k, v in r.items() if isinstance(v, dict)}
            print(f"{rows:>11,} rows: kept {r['kept']:,}; (seconds, peak GiB) {line}; report "
                  f"{r['report']['mb']:.2f} MB; plan {r['plan']['shards']} shards of {r['plan']['min']}-"
                  f"{r['plan']['max']}", flush=True)
        for r in results:  # after every size's filter run: the long semantic runs come last
            if r["rows"] <= args.semantic_max:
                r["semantic"] = semantic_run(root, r["rows"])
                print(f"{r['rows']:>11,} rows: semantic dedup {r['semantic']['seconds']:.1f} s, "
                      f"{r['semantic']['peak_gib']:.2f} GiB", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")
    n = [r["rows"] for r in results]
    fp = [r["filter"]["seconds"] + r["plan"]["seconds"] for r in results]
    print("| rows | filter s | filter GiB | plan s | plan GiB | filter+plan s/M rows | status s | report s | "
          "report GiB | report MB | semantic s | semantic GiB |")
    for r in results:
        sem = r.get("semantic")
        print(f"| {r['rows']:,} | {r['filter']['seconds']:.1f} | {r['filter']['peak_gib']:.2f} | "
              f"{r['plan']['seconds']:.1f} | {r['plan']['peak_gib']:.2f} | "
              f"{(r['filter']['seconds'] + r['plan']['seconds']) / r['rows'] * 1e6:.1f} | "
              f"{r['status']['seconds']:.1f} | {r['report']['seconds']:.1f} | {r['report']['peak_gib']:.2f} | "
              f"{r['report']['mb']:.2f} | {sem['seconds']:.1f} | {sem['peak_gib']:.2f} |" if sem else
              f"| {r['rows']:,} | {r['filter']['seconds']:.1f} | {r['filter']['peak_gib']:.2f} | "
              f"{r['plan']['seconds']:.1f} | {r['plan']['peak_gib']:.2f} | "
              f"{(r['filter']['seconds'] + r['plan']['seconds']) / r['rows'] * 1e6:.1f} | "
              f"{r['status']['seconds']:.1f} | {r['report']['seconds']:.1f} | {r['report']['peak_gib']:.2f} | "
              f"{r['report']['mb']:.2f} | - | - |")
    exponent = slope(n, fp) if len(n) > 1 else float("nan")
    pairs = [f"{n[i]:,}->{n[i + 1]:,}: {slope(n[i:i + 2], fp[i:i + 2]):.2f}" for i in range(len(n) - 1)]
    print(f"filter + plan cost exponent {exponent:.2f} (pairwise {', '.join(pairs)}; processes, with start-up)")
    cpu = [r["filter"]["cpu_seconds"] + r["plan"]["cpu_seconds"] for r in results]
    if len(n) > 1:
        print(f"filter + plan CPU seconds: {', '.join(f'{c:.1f}' for c in cpu)}; exponent {slope(n, cpu):.2f}")
    stage = [r["filter"]["stage_seconds"] for r in results]
    if len(n) > 1:
        print(f"filter stage alone (its own wall_seconds, no start-up): {', '.join(f'{s:.1f}' for s in stage)} s; "
              f"exponent {slope(n, stage):.2f}")
    sem = [(r["rows"], r["semantic"]["seconds"], r["semantic"]["peak_gib"]) for r in results if "semantic" in r]
    if len(sem) > 1:
        e = slope([s[0] for s in sem], [s[1] for s in sem])
        em = slope([s[0] for s in sem], [s[2] for s in sem])
        for target in (12_800_000, 128_000_000):
            t = sem[-1][1] * (target / sem[-1][0]) ** e
            m = sem[-1][2] * (target / sem[-1][0]) ** em
            print(f"semantic dedup at {target:,} rows (extrapolated, exponent {e:.2f} time, {em:.2f} memory): "
                  f"{t:,.0f} s, {m:.1f} GiB")
    last = results[-1]
    print(result_line("scale_filter_plan_seconds", fp[-1], "<", 300))
    print(result_line("scale_peak_rss_gib", max(last["filter"]["peak_gib"], last["plan"]["peak_gib"]), "<", 6))
    print(result_line("scale_cost_exponent", exponent, "<=", 1.1))
    print(result_line("scale_status_seconds", last["status"]["seconds"], "<", 10))
    print(result_line("scale_report_seconds", last["report"]["seconds"], "<", 60))
    print(result_line("scale_report_mb", last["report"]["mb"], "<", 20))


if __name__ == "__main__":
    main()
