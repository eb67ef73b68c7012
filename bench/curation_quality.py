"""Proof that curation works, on every world: an encoder trained on DFN-curated shards vs one trained on the raw
pool, at equal steps, checked against each web's ground truth.

    python bench/curation_quality.py            # configs/dfn_bootstrap.yaml as shipped, both rendered worlds, 1 seed
    python bench/curation_quality.py --worlds fashion   # the real-photo world (needs `make fashion-data`)
    python bench/curation_quality.py --seeds 2  # BENCHMARKS.md's table (29 min on 2 cores at load average ~20)
    python bench/curation_quality.py --full     # both worlds, 3 seeds each
    python bench/curation_quality.py --worlds objects --seeds 2 --set train.model.name=tiny-clip-rn   # any override

Defaults are chosen on one world and confirmed on the others (`bench/curation_defaults.py` compares candidates);
this bench checks the shipped config on each. Per world (`synthetic.world`: `shapes`, flat shapes on plain
backgrounds; `objects`, outlined shaded icons on gradients, bokeh, clutter or sky; `fashion`, Fashion-MNIST's real
grey product photos, ten classes), in a fresh run root, through
`run_pipeline`: download the pool and the high-quality set, train the filtering network on the high-quality set,
score the pool with it, then filter + reshard twice, with the config's recipe (-> dataset `curated`) and with the
`none` recipe (-> `raw`). The final encoder stage `train` runs once per seed and arm with the same model, objective,
batch and steps; the seed sets the initial weights and the data order (in-process, `scaling.num_workers: 0`). Each
encoder is evaluated zero-shot on the web's held-out test set (30 classes; fashion 10, photos of its test split).
Runs are deterministic: the same seed and config give the same numbers (the download stage writes shards in key
order), so the spread shown is over seeds.

Side by side, per seed, open_clip's own trainer (`open_clip_train.main`, as a user runs it) trains the same tiny model
on the raw pool's shards and on the curated shards (`--open-clip raw,curated`, the default; `''` skips it) with the
final encoder's steps, batch, learning rate, warmup + cosine schedule, AdamW settings, grad clip and torch threads,
and is scored by the same evaluator on the same held-out set, classnames and templates.

AUROC: `dfn_score` of every downloaded, decodable pool sample against truth.parquet. Clean: noise in {none,
exact_duplicate, near_duplicate} (the caption describes the served image); corrupted: noise in
{mismatched_caption, generic_caption, junk_image, tiny_image}. Last lines:
RESULT dfn_auroc_min_over_worlds=... target>=0.9
RESULT curation_gain_min_over_worlds=<the smaller world's mean gain, points> target>=8
RESULT shipped_raw_vs_open_clip_train=<winnow's raw top-1 minus open_clip_train's, mean over seeds, the smallest
    world's, points> target>=0
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import end_embedded_run, machine, require_world, result_line  # noqa: E402

CONFIG = REPO / "configs" / "dfn_bootstrap.yaml"
WORLDS = ("shapes", "objects")
CLEAN = ("none", "exact_duplicate", "near_duplicate")
CORRUPTED = ("mismatched_caption", "generic_caption", "junk_image", "tiny_image")
IN_PROCESS = ["train_filter.scaling.num_workers=0", "train.scaling.num_workers=0"]  # no Ray Train: less overhead
AUROC_TARGET, GAIN_TARGET = 0.9, 8.0


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
        os.makedirs(root, exist_ok=True)
        self.root, self.base = root, [f"root={root}", *base]
        self.log = os.path.join(root, "bench.log")

    def config(self, *sets: str):
        from pipeline.pipeline_config import load_pipeline_config

        return load_pipeline_config(CONFIG, [*self.base, *sets])

    def __call__(self, stage: str, *sets: str) -> dict:
        from pipeline.cli.run import run_pipeline

        cfg = self.config(*sets)
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


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    m, sd = mean_sd(values)
    return f"{m:.1f} ± {sd:.1f} (min {min(values):.1f}, max {max(values):.1f})"


def fetch(run: Runner, *sets: str) -> str:
    """Download the pool and the high-quality set; a line with what came back."""
    pool, hq = run("download", *sets), run("download_hq", *sets)
    return f"pool {pool['ok']} of {pool['samples']} downloaded ({pool['reasons'].get('timeout', 0)} timeouts), " \
           f"hq {hq['ok']} of {hq['samples']}"


def filter_network(run: Runner, *sets: str) -> str:
    """Train the filtering network and score the pool with it; its zero-shot top-1 and its own (truth-free)
    held-out AUROC estimate where the config has `holdout:`."""
    res = run("train_filter", *sets)
    run("score", *sets)
    check = res.get("holdout")
    estimate = f", self-check AUROC estimate {check['estimated_auroc']:.3f} (step {check['step']})" if check else ""
    return f"zero-shot top-1 {100 * res['eval']['zeroshot']['top1']:.1f}%{estimate}"


def curate(run: Runner, recipe: str, arm: str) -> None:
    """Filter the pool with `recipe` (a name or a YAML path) and reshard what it keeps into dataset `arm`."""
    run("filter", f"filter.recipe={recipe}")
    run("reshard", f"reshard.recipe={recipe}", f"reshard.output={arm}")


def train_arm(run: Runner, arm: str, seed: int, *sets: str, tag: str = "") -> float:
    """The final encoder on dataset `arm` with this seed; zero-shot top-1 (%) on the held-out set."""
    res = run("train", f"train.input={arm}", f"train.output=train_{arm}{tag}_seed{seed}", f"train.seed={seed}",
              f"train.data.seed={seed}", *sets)
    return 100 * res["eval"]["zeroshot"]["top1"]


def open_clip_arm(run: Runner, arm: str, seed: int) -> float:
    """open_clip's own trainer (`open_clip_train.main`, in a subprocess) on dataset `arm`'s shards, with the final
    encoder's model, steps, batch, AdamW and warmup + cosine schedule and torch threads; zero-shot top-1 (%) on the
    same held-out set through winnow's evaluator (same classnames, templates and eval preprocessing). Its data order
    is open_clip's (`--dataset-resampled`: shards drawn with replacement, samples shuffled in a 5,000 buffer). A kept
    workdir's finished run is reused."""
    import shutil

    from bench.train_clip import open_clip_args, run_open_clip_train
    from training.contrastive.config import EvalConfig, ZeroShotConfig
    from training.contrastive.eval import run_eval

    cfg = run.config()
    train, test = cfg.stages["train"], os.path.join(cfg.synthetic_dir(), "test")
    o = train.optim
    out = os.path.join(run.root, f"open_clip_{arm}_seed{seed}")
    ckpt = os.path.join(out, "peer", "checkpoints", "epoch_1.pt")
    if not os.path.exists(ckpt):
        shutil.rmtree(out, ignore_errors=True)  # open_clip_train refuses an existing experiment
        shards = sorted(glob.glob(os.path.join(run.root, arm, "shards", "*.tar")))
        args = open_clip_args(shards, out, model=train.model.name, steps=train.steps, batch=train.data.batch_size,
                              lr=o.lr, warmup=o.warmup_steps, log_every=max(10, train.steps // 10), seed=seed)
        args += ["--dataset-resampled", "--save-frequency", "1", "--wd", str(o.weight_decay), "--beta1",
                 str(o.beta1), "--beta2", str(o.beta2), "--eps", str(o.eps), "--accum-freq", str(o.accum_steps)]
        if o.grad_clip:
            args += ["--grad-clip-norm", str(o.grad_clip)]
        threads = train.scaling.torch_threads or max(1, int(train.scaling.cpus_per_worker))
        with open(run.log, "a") as f:
            f.write(run_open_clip_train(args, threads))
    zeroshot = ZeroShotConfig(shards=os.path.join(test, "*.tar"), classnames=os.path.join(test, "classnames.json"))
    res = run_eval(EvalConfig(zeroshot=zeroshot), train.model.name, ckpt, device="cpu")
    return 100 * res["zeroshot"]["top1"]


@dataclass
class WorldResult:
    world: str
    auroc: float
    top1: dict[str, list[float]] = field(default_factory=dict)

    @property
    def gains(self) -> list[float]:
        return [c - r for c, r in zip(self.top1["curated"], self.top1["raw"], strict=True)]

    @property
    def vs_open_clip(self) -> list[float]:
        """winnow's final encoder minus open_clip_train's, both on the raw pool, per seed (points)."""
        return [w - o for w, o in zip(self.top1["raw"], self.top1.get("open_clip_raw", []), strict=False)]


def run_world(world: str, root: str, sets: list[str], seeds: list[int], peers: list[str] = ()) -> WorldResult:
    """The shipped bootstrap on one world: download, filtering network, AUROC, both arms, the final encoders, and
    `open_clip_train` on the `peers` arms' shards."""
    from pipeline.core.layout import read_json

    run = Runner(root, [f"synthetic.world={world}", *sets])
    recipe = run.config().stages["filter"].recipe
    t = time.time()
    print(f"\n## world {world} (run root {root})\n  {fetch(run)}  [{time.time() - t:.0f}s]", flush=True)
    t = time.time()
    print(f"  filtering network: {filter_network(run)}, pool scored  [{time.time() - t:.0f}s]", flush=True)
    arms = {"curated": recipe, "raw": "none"}
    for arm, name in arms.items():
        curate(run, name, arm)
    pool = scored_pool(root)
    auc, auc_lines = auroc_table(pool)
    print("\nfiltering network vs ground truth (downloaded, decodable pool samples):\n" + "\n".join(auc_lines))
    kept = {arm: clean_fraction(root, name, pool) for arm, name in arms.items()}
    out = WorldResult(world, auc, {arm: [] for arm in [*arms, *(f"open_clip_{p}" for p in peers)]})
    classes = len(read_json(os.path.join(root, "web", "web.json"))["classnames"])
    print(f"\nfinal encoder, zero-shot top-1 on the held-out set (chance {100 / classes:.1f}%):", flush=True)
    for seed in seeds:
        t = time.time()
        for arm in arms:  # interleaved: load from elsewhere on the machine hits both arms alike
            out.top1[arm].append(train_arm(run, arm, seed))
        for arm in peers:
            out.top1[f"open_clip_{arm}"].append(open_clip_arm(run, arm, seed))
        peer = "".join(f"  open_clip_train {arm} {out.top1[f'open_clip_{arm}'][-1]:5.1f}" for arm in peers)
        print(f"  seed {seed}: curated {out.top1['curated'][-1]:5.1f}  raw {out.top1['raw'][-1]:5.1f}  "
              f"gain {out.gains[-1]:+5.1f} points{peer}  [{time.time() - t:.0f}s]", flush=True)
    print("\n| arm | trainer | recipe | samples | clean | zero-shot top-1 per seed | mean ± sd (points) |\n"
          "|---|---|---|---:|---:|---|---|")
    for arm in out.top1:
        data = arm.removeprefix("open_clip_")
        n, frac = kept[data]
        trainer = "open_clip_train" if arm != data else "winnow"
        print(f"| {data} | {trainer} | {arms[data]} | {n} | {frac:.1%} | "
              f"{', '.join(f'{v:.1f}' for v in out.top1[arm])} | {spread(out.top1[arm])} |")
    print(f"| **gain** (winnow) | | | | | {', '.join(f'{g:+.1f}' for g in out.gains)} | **{spread(out.gains)}** |")
    if out.vs_open_clip:
        print(f"| **raw: winnow - open_clip_train** | | | | | {', '.join(f'{g:+.1f}' for g in out.vs_open_clip)} | "
              f"**{spread(out.vs_open_clip)}** |")
    sys.stdout.flush()
    return out


def bench_env() -> None:
    os.environ.pop("RAY_ADDRESS", None)  # an embedded local Ray: this bench never attaches to a cluster
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="3 seeds per world")
    ap.add_argument("--seeds", type=int, default=None, help="final-encoder seeds per arm (default 1, --full 3)")
    ap.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated worlds: shapes, objects, fashion")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/dfn_bootstrap.yaml (repeatable)")
    ap.add_argument("--workdir", default=None, help="run root to keep (default: a temp dir, removed)")
    ap.add_argument("--open-clip", default="raw,curated", metavar="ARMS",
                    help="datasets open_clip_train also trains on, per seed, comma-separated ('' = none)")
    args = ap.parse_args()
    peers = [a.strip() for a in args.open_clip.split(",") if a.strip()]
    seeds = list(range(args.seeds or (3 if args.full else 1)))
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    for world in worlds:
        require_world(world)
    bench_env()
    base = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bench-curation-")
    sets = [*IN_PROCESS, *args.sets]
    cfg = Runner(os.path.join(base, worlds[0]), sets).config()
    train, filt = cfg.stages["train"], cfg.stages["train_filter"]
    t0 = time.time()
    try:
        print(f"machine: {machine()}; {load_line()}")
        print(f"config {CONFIG.relative_to(REPO)}{' ' + ' '.join(args.sets) if args.sets else ''}: pool "
              f"{cfg.synthetic.pool_size}, hq {cfg.synthetic.hq_size}, noise {cfg.synthetic.noise.model_dump()}; "
              f"filtering network {filt.model.name} {filt.steps} steps; recipe {cfg.stages['filter'].recipe}; final "
              f"encoder {train.model.name} ({train.objective}) {train.steps} steps x batch {train.data.batch_size}; "
              f"worlds {', '.join(worlds)}; seeds {seeds}", flush=True)
        results = [run_world(w, os.path.join(base, w), sets, seeds, peers) for w in worlds]
        head = "".join(f" open_clip_train {p} top-1 |" for p in peers)
        print(f"\n| world | filter AUROC | curated top-1 | raw top-1 | gain (points) |{head}"
              f"{' raw: winnow - open_clip_train |' if 'raw' in peers else ''}\n"
              f"|---|---:|---:|---:|---:|{'---:|' * (len(peers) + ('raw' in peers))}")
        for r in results:
            cells = "".join(f" {spread(r.top1[f'open_clip_{p}'])} |" for p in peers)
            cells += f" **{spread(r.vs_open_clip)}** |" if "raw" in peers else ""
            print(f"| {r.world} | {r.auroc:.3f} | {spread(r.top1['curated'])} | {spread(r.top1['raw'])} | "
                  f"**{spread(r.gains)}** |{cells}")
        print(f"\nwall time {time.time() - t0:.0f}s; {load_line()}")
        print(result_line("dfn_auroc_min_over_worlds", min(r.auroc for r in results), ">=", AUROC_TARGET))
        print(result_line("curation_gain_min_over_worlds", min(mean_sd(r.gains)[0] for r in results), ">=",
                          GAIN_TARGET))
        if "raw" in peers:  # the smallest world's mean over seeds
            print(result_line("shipped_raw_vs_open_clip_train", min(mean_sd(r.vs_open_clip)[0] for r in results),
                              ">=", 0.0))
    finally:
        end_embedded_run(base, keep=bool(args.workdir))


if __name__ == "__main__":
    main()
