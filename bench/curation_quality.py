"""Proof that curation works: an encoder trained on DFN-curated shards vs one trained on the raw pool, at equal
steps, on the synthetic web, checked against its ground truth.

    python bench/curation_quality.py            # configs/dfn_bootstrap.yaml as shipped, 3 seeds (~9 min, 2 cores)
    python bench/curation_quality.py --full     # pool 10000, hq 4000, longer training, 5 seeds

Runs the stages of configs/dfn_bootstrap.yaml through `run_pipeline` in one fresh run root: download the pool and
the high-quality set, train the filtering network on the high-quality set, score the pool with it, then filter +
reshard twice, with the config's recipe (-> dataset `curated`) and with the `none` recipe (-> `raw`). The final
encoder stage `train` then runs once per seed and arm, with the same model, objective, batch and steps; the seed
sets the initial weights and the data order (training runs in-process, `scaling.num_workers: 0`). Each encoder is
evaluated zero-shot on the web's held-out 30-class test set.

AUROC: `dfn_score` of every downloaded, decodable pool sample against truth.parquet. Clean: noise in {none,
exact_duplicate, near_duplicate} (the caption describes the served image); corrupted: noise in
{mismatched_caption, generic_caption, junk_image, tiny_image}. Last lines:
RESULT dfn_auroc=... target>=0.95
RESULT curation_top1_gain=<mean points over seeds> target>=10
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

CONFIG = REPO / "configs" / "dfn_bootstrap.yaml"
CLEAN = ("none", "exact_duplicate", "near_duplicate")
CORRUPTED = ("mismatched_caption", "generic_caption", "junk_image", "tiny_image")
FULL = ["synthetic.pool_size=10000", "synthetic.hq_size=4000", "train_filter.steps=1000", "train.steps=1000"]


@contextlib.contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr, Python's and Ray's C++ core's alike, to a file for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)


class Runner:
    """Runs one stage of the bootstrap config at a time, with overrides; stage output goes to `<root>/bench.log`."""

    def __init__(self, root: str, base: list[str]):
        self.root, self.base = root, [f"root={root}", *base]
        self.log = os.path.join(root, "bench.log")

    def __call__(self, stage: str, *sets: str) -> dict:
        from pipeline.cli.run import run_pipeline
        from pipeline.pipeline_config import load_pipeline_config

        cfg = load_pipeline_config(CONFIG, [*self.base, *sets])
        try:
            with output_to(self.log):
                return run_pipeline(cfg, only=stage, config_path=str(CONFIG))[stage]
        except BaseException:
            with open(self.log, errors="replace") as f:
                tail = f.read()[-4000:]
            print(f"stage {stage} failed; the end of {self.log}:\n{tail}", file=sys.stderr)
            raise


def auroc(scores, positive) -> float:
    """Probability that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
    import numpy as np
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    ranks = rankdata(scores)
    p, n = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - p * (p + 1) / 2) / (p * n))


def scored_pool(root: str):
    """Downloaded pool samples with their dfn_score and ground-truth noise kind (a pandas DataFrame)."""
    import pandas as pd

    signals = pd.concat([pd.read_parquet(p, columns=["uid", "decodable", "dfn_score"])
                         for p in sorted(glob.glob(os.path.join(root, "pool", "signals", "*.parquet")))])
    truth = pd.read_parquet(os.path.join(root, "web", "truth.parquet"), columns=["uid", "noise"])
    return signals.merge(truth, on="uid", how="left", validate="one_to_one")


def auroc_table(pool) -> tuple[float, list[str]]:
    import numpy as np

    ok = pool[pool["decodable"] & np.isfinite(pool["dfn_score"]) & pool["noise"].isin(CLEAN + CORRUPTED)]
    clean = ok["noise"].isin(CLEAN)
    overall = auroc(ok["dfn_score"], clean)
    lines = ["| pairs | n | mean dfn_score | AUROC vs clean |", "|---|---:|---:|---:|",
             f"| clean ({', '.join(CLEAN)}) | {int(clean.sum())} | {ok['dfn_score'][clean].mean():.3f} | - |"]
    for kind in CORRUPTED:
        part = ok[clean | (ok["noise"] == kind)]
        mine = ok["noise"] == kind
        lines.append(f"| {kind} | {int(mine.sum())} | {ok['dfn_score'][mine].mean():.3f} | "
                     f"{auroc(part['dfn_score'], part['noise'].isin(CLEAN)):.3f} |")
    lines.append(f"| **all corrupted** | {int((~clean).sum())} | {ok['dfn_score'][~clean].mean():.3f} | "
                 f"**{overall:.3f}** |")
    return overall, lines


def clean_fraction(root: str, recipe: str, pool) -> tuple[int, float]:
    """(kept samples, fraction of them that are clean) of a recipe's selection."""
    import pandas as pd

    sel = pd.read_parquet(os.path.join(root, "pool", "selection", f"{recipe}.parquet"), columns=["uid", "kept"])
    kept = sel[sel["kept"]].merge(pool[["uid", "noise"]], on="uid", how="left")
    return len(kept), float(kept["noise"].isin(CLEAN).mean())


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="bigger web, longer training, 5 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="final-encoder seeds per arm (default 3, --full 5)")
    ap.add_argument("--workdir", default=None, help="run root to keep (default: a temp dir, removed)")
    args = ap.parse_args()
    seeds = list(range(args.seeds or (5 if args.full else 3)))
    os.environ.pop("RAY_ADDRESS", None)  # an embedded local Ray: this bench never attaches to a cluster
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    from pipeline.pipeline_config import load_pipeline_config

    root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bench-curation-")
    os.makedirs(root, exist_ok=True)
    sets = [*(FULL if args.full else []), "train_filter.scaling.num_workers=0", "train.scaling.num_workers=0"]
    cfg = load_pipeline_config(CONFIG, [f"root={root}", *sets])
    recipe, train = cfg.stages["filter"].recipe, cfg.stages["train"]
    run = Runner(root, sets)
    t0 = time.time()
    try:
        print(f"machine: {machine()}")
        print(f"config {CONFIG.relative_to(REPO)}{' (--full)' if args.full else ''}: pool {cfg.synthetic.pool_size}, "
              f"hq {cfg.synthetic.hq_size}, noise {cfg.synthetic.noise.model_dump()}; filtering network "
              f"{cfg.stages['train_filter'].model.name} {cfg.stages['train_filter'].steps} steps; final encoder "
              f"{train.model.name} ({train.objective}) {train.steps} steps x batch {train.data.batch_size}, "
              f"seeds {seeds}; run root {root} (stage output: bench.log)", flush=True)
        for stage in ("download", "download_hq", "train_filter", "score"):
            t = time.time()
            res = run(stage)
            zs = (res.get("eval") or {}).get("zeroshot") if isinstance(res, dict) else None
            print(f"  {stage:13s} {time.time() - t:6.1f}s" + (f"  zero-shot top-1 {zs['top1']:.1%}" if zs else ""),
                  flush=True)
        arms = {"curated": recipe, "raw": "none"}
        for arm, name in arms.items():
            run("filter", f"filter.recipe={name}")
            run("reshard", f"reshard.recipe={name}", f"reshard.output={arm}")
        pool = scored_pool(root)
        auc, auc_lines = auroc_table(pool)
        print("\nfiltering network vs ground truth (downloaded, decodable pool samples):")
        print("\n".join(auc_lines))
        kept = {arm: clean_fraction(root, name, pool) for arm, name in arms.items()}
        for arm, (n, frac) in kept.items():
            print(f"  {arm:8s} recipe {arms[arm]:14s} {n:5d} samples, {frac:.1%} clean")

        top1: dict[str, list[float]] = {arm: [] for arm in arms}
        print(f"\nfinal encoder, {train.steps} steps each, zero-shot top-1 on the held-out set (chance 3.3%):",
              flush=True)
        for seed in seeds:
            for arm in arms:  # interleaved: load from elsewhere on the machine hits both arms alike
                res = run("train", f"train.input={arm}", f"train.output=train_{arm}_seed{seed}",
                          f"train.seed={seed}", f"train.data.seed={seed}")
                top1[arm].append(100 * res["eval"]["zeroshot"]["top1"])
            print(f"  seed {seed}: curated {top1['curated'][-1]:5.1f}  raw {top1['raw'][-1]:5.1f}  "
                  f"gain {top1['curated'][-1] - top1['raw'][-1]:+5.1f} points", flush=True)
        gains = [c - r for c, r in zip(top1["curated"], top1["raw"], strict=True)]
        print("\n| arm | recipe | samples | clean | zero-shot top-1 per seed | mean ± sd (points) |")
        print("|---|---|---:|---:|---|---|")
        for arm in arms:
            n, frac = kept[arm]
            print(f"| {arm} | {arms[arm]} | {n} | {frac:.1%} | {', '.join(f'{v:.1f}' for v in top1[arm])} | "
                  f"{spread(top1[arm])} |")
        print(f"| **gain** | | | | {', '.join(f'{g:+.1f}' for g in gains)} | **{spread(gains)}** |")
        print(f"\nwall time {time.time() - t0:.0f}s")
        print(result_line("dfn_auroc", auc, ">=", 0.95))
        print(result_line("curation_top1_gain", statistics.mean(gains), ">=", 10))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # the embedded Ray the stages started in this process, nothing else
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
