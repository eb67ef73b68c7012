"""The evidence behind the DFN bootstrap's defaults: candidate filtering networks, fractions kept and final encoders
compared on both synthetic worlds, each against the raw pool at the same model, steps and seed.

    python bench/curation_defaults.py           # the old defaults vs the shipped ones, both worlds, 1 seed
    python bench/curation_defaults.py --full    # the whole comparison: 2 filtering networks x 2 fractions x 2 final
                                                #   encoders, 2 seeds, both worlds (hours on 2 busy cores)
    python bench/curation_defaults.py --worlds objects --filters tiny-clip-vit-s:800,tiny-clip-vit-s:300 \
        --fractions 0.5 --encoders tiny-clip-vit-s --seeds 2

A default must give a clear curated-vs-raw gain on both worlds (DESIGN.md: chosen on one world, confirmed on the
other). Per world, in one run root (configs/dfn_bootstrap.yaml with `synthetic.world` set): download once; train
each candidate filtering network (`model:steps`) on the high-quality set and score the pool with it (its AUROC
against the truth); for each fraction, keep that top fraction by `dfn_score` (recipe dfn_synthetic otherwise
unchanged) and reshard; train each candidate final encoder (the config's objective and steps) on every curated
dataset and on the raw pool, per seed. Last line: the shipped setting's smallest gain over the worlds:
RESULT shipped_gain_min_over_worlds=... target>=8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import curation_quality as cq  # noqa: E402
from bench.common import machine, result_line  # noqa: E402

OLD = ("tiny-clip-rn:800", 0.3, "tiny-clip-rn")  # the defaults chosen on the shapes world alone
FULL = {"filters": "tiny-clip-rn:800,tiny-clip-vit-s:800", "fractions": "0.3,0.5",
        "encoders": "tiny-clip-rn,tiny-clip-vit-s", "seeds": 2}


@dataclass(frozen=True)
class Setting:
    filter: str  # "model:steps" of the filtering network
    fraction: float
    encoder: str

    def label(self) -> str:
        return f"filter {self.filter}, top {self.fraction:.0%}, encoder {self.encoder}"


def write_recipe(root: str, base: str, fraction: float, name: str) -> str:
    """The config's recipe with `dfn_score: {top_fraction: fraction}`, as `<root>/recipes/<name>.yaml`."""
    from filtering.recipe import resolve_recipe

    body = yaml.safe_load(resolve_recipe(base).read_text())
    ops = [{"dfn_score": {"top_fraction": fraction}} if isinstance(op, dict) and "dfn_score" in op else op
           for op in body["ops"]]
    path = os.path.join(root, "recipes", f"{name}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump({"description": f"{base} keeping the top {fraction:.0%}", "ops": ops}, f, sort_keys=False)
    return path


def filter_sets(spec: str, tag: str) -> list[str]:
    model, steps = spec.split(":")
    return [f"train_filter.model.name={model}", f"train_filter.steps={steps}", f"train_filter.output=filter_{tag}"]


def compare_world(world: str, root: str, settings: list[Setting], seeds: list[int], sets: list[str]) -> list[dict]:
    """One row per setting: filter AUROC, kept samples and clean share, curated and raw top-1 per seed, gains."""
    run = cq.Runner(root, [f"synthetic.world={world}", *sets])
    base_recipe = run.config().stages["filter"].recipe
    print(f"\n## world {world} (run root {root})\n  {cq.fetch(run)}", flush=True)
    raw: dict[tuple[str, int], float] = {}
    rows = []
    for fi, spec in enumerate(dict.fromkeys(s.filter for s in settings)):
        t = time.time()
        tag = spec.replace(":", "-")  # names its model dir and curated datasets: a kept workdir is reused
        fsets = filter_sets(spec, tag)
        own = cq.filter_network(run, *fsets)
        if fi == 0:
            cq.curate(run, "none", "raw")  # the raw pool: every decodable sample, whichever network scored it
        auc, _ = cq.auroc_table(cq.scored_pool(root))
        print(f"  filtering network {spec}: AUROC {auc:.3f}, own top-1 {own:.1f}%  [{time.time() - t:.0f}s]",
              flush=True)
        for s in (s for s in settings if s.filter == spec):
            name = f"dfn_{tag}_top{round(100 * s.fraction)}"
            cq.curate(run, write_recipe(root, base_recipe, s.fraction, name), name)
            n, clean = cq.clean_fraction(root, name, cq.scored_pool(root))
            cur, gains = [], []
            for seed in seeds:
                t = time.time()
                enc = f"train.model.name={s.encoder}"
                if (s.encoder, seed) not in raw:
                    raw[s.encoder, seed] = cq.train_arm(run, "raw", seed, enc, tag=f"_{s.encoder}")
                cur.append(cq.train_arm(run, name, seed, enc, tag=f"_{s.encoder}"))
                gains.append(cur[-1] - raw[s.encoder, seed])
                print(f"    {s.label()}, seed {seed}: curated {cur[-1]:.1f} raw {raw[s.encoder, seed]:.1f} "
                      f"gain {gains[-1]:+.1f}  [{time.time() - t:.0f}s]", flush=True)
            rows.append({"world": world, "setting": s, "auroc": auc, "kept": n, "clean": clean, "curated": cur,
                         "raw": [raw[s.encoder, seed] for seed in seeds], "gains": gains})
    return rows


def shipped_setting(sets: list[str]) -> Setting:
    cfg = cq.Runner(tempfile.gettempdir(), sets).config()
    from filtering.recipe import load_recipe

    recipe = load_recipe(cfg.stages["filter"].recipe)
    fraction = next(op.params.top_fraction for op in recipe.ops if getattr(op, "name", "") == "dfn_score")
    f = cfg.stages["train_filter"]
    return Setting(f"{f.model.name}:{f.steps}", fraction, cfg.stages["train"].model.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the whole comparison (see the module docstring)")
    ap.add_argument("--worlds", default=",".join(cq.WORLDS))
    ap.add_argument("--filters", default=None, help="filtering networks, comma-separated model:steps")
    ap.add_argument("--fractions", default=None, help="fractions kept, comma-separated")
    ap.add_argument("--encoders", default=None, help="final encoders, comma-separated model names")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default=None, help="run root to keep (default: a temp dir, removed)")
    args = ap.parse_args()
    cq.bench_env()
    sets = [*cq.IN_PROCESS, *args.sets]
    shipped = shipped_setting(sets)
    grid = FULL if args.full else {}
    pick = {k: getattr(args, k) or grid.get(k) for k in ("filters", "fractions", "encoders")}
    if any(pick.values()):
        settings = [Setting(f, float(fr), e) for f in (pick["filters"] or shipped.filter).split(",")
                    for fr in str(pick["fractions"] or shipped.fraction).split(",")
                    for e in (pick["encoders"] or shipped.encoder).split(",")]
    else:
        settings = list(dict.fromkeys([Setting(*OLD), shipped]))
    seeds = list(range(args.seeds or grid.get("seeds", 1)))
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    base = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bench-defaults-")
    t0 = time.time()
    try:
        print(f"machine: {machine()}; {cq.load_line()}\nshipped: {shipped.label()}; seeds {seeds}", flush=True)
        rows = [r for w in worlds for r in compare_world(w, os.path.join(base, w), settings, seeds, sets)]
        print("\n| world | filtering network | kept | final encoder | AUROC | kept (clean) | curated top-1 | "
              "raw top-1 | gain (points) |\n|---|---|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            s = r["setting"]
            mark = " (shipped)" if s == shipped else ""
            print(f"| {r['world']} | {s.filter} | {s.fraction:.0%} | {s.encoder}{mark} | {r['auroc']:.3f} | "
                  f"{r['kept']} ({r['clean']:.0%}) | {cq.spread(r['curated'])} | {cq.spread(r['raw'])} | "
                  f"**{cq.spread(r['gains'])}** |")
        print(f"\nwall time {time.time() - t0:.0f}s; {cq.load_line()}")
        mine = [cq.mean_sd(r["gains"])[0] for r in rows if r["setting"] == shipped]
        if mine:
            print(result_line("shipped_gain_min_over_worlds", min(mine), ">=", cq.GAIN_TARGET))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
