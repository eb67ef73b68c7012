"""Proof that CapFilt works: caption noise before and after, images keeping a caption, the filter's label-free
AUROC estimate against its true AUROC, and a final encoder trained on the CapFilt shards vs the same encoder on the
web captions only, at equal steps, on the synthetic web's worlds, checked against the ground truth.

    python bench/capfilt_quality.py                # shapes world, a small web, 2 seeds (~12 min on 2 idle cores)
    python bench/capfilt_quality.py --worlds objects shapes --seeds 3   # BENCHMARKS.md's table: the small web on
                                                   # both worlds (30 min on 2 cores at load average ~20)
    python bench/capfilt_quality.py --full         # both worlds, configs/capfilt_bootstrap.yaml's web, 3 seeds
    python bench/capfilt_quality.py --worlds fashion   # real grey photos, ten classes (needs `make fashion-data`)

Runs the stages of configs/capfilt_bootstrap.yaml through `run_pipeline`, one fresh run root per world: download
the pool and the high-quality set, train the captioner (tiny CoCa) and the separate filter (tiny CLIP, 10% held
out), score (signals), caption + judge, filter with the capfilt recipe, reshard. The final encoder stages `train`
(CapFilt shards) and `train_web` (the raw pool: web captions only) then run once per seed, same model, objective,
batch and steps; the seed sets the initial weights and the data order (in-process training). Each encoder is
evaluated zero-shot on the web's held-out test set.

Truth (truth.parquet): a web caption is right when its pair is clean (noise none / exact or near duplicate); a
synthetic caption is right when it names the image's colour and shape and no other (junk images have none; the
fashion world, whose classes have no colour: its class and no other).
Caption noise = the share of (image, caption) training pairs whose caption is wrong: before, every decodable pool
image with its web caption; after, every kept caption of every kept image. The filter's true AUROC ranks all its
judged captions (web and synthetic) against that truth; its estimate is the train_filter stage's, from held-out
pairs against shuffled captions, with no labels. Also printed: how often a synthetic caption names the right colour
and the right shape (against chance: a captioner that has not learnt shapes writes fluent captions with a random
shape), and the noise and images kept had the cut been stricter (P(match) >= 0.7, 0.9, 0.95). Last lines:
RESULT capfilt_caption_noise_after=<mean over worlds> target<=0.15
RESULT capfilt_auroc_estimate_error=<largest |estimate - true|> target<=0.1
RESULT capfilt_top1_gain=<mean points over worlds and seeds> target>=3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import end_embedded_run, machine, require_world, result_line  # noqa: E402
from bench.curation_quality import output_to, spread  # noqa: E402

CONFIG = REPO / "configs" / "capfilt_bootstrap.yaml"
CLEAN = ("none", "exact_duplicate", "near_duplicate")
IN_PROCESS = [f"{s}.scaling.num_workers=0" for s in ("train_captioner", "train_filter", "train", "train_web")]
SMALL = ["synthetic.pool_size=1500", "synthetic.hq_size=1500", "train_captioner.steps=300", "train_filter.steps=500",
         "train.steps=300", "train_web.steps=300", "download.number_sample_per_shard=500"]
SETUP = ("download", "download_hq", "train_captioner", "train_filter", "score", "caption", "filter", "reshard")


class Runner:
    """Runs one stage of the CapFilt config at a time, with overrides; stage output goes to `<root>/bench.log`."""

    def __init__(self, root: str, base: list[str]):
        self.root, self.base = root, [f"root={root}", *base]
        self.log = os.path.join(root, "bench.log")
        os.makedirs(root, exist_ok=True)

    def __call__(self, stage: str, *sets: str) -> dict:
        from pipeline.cli.run import run_pipeline
        from pipeline.pipeline_config import load_pipeline_config

        cfg = load_pipeline_config(CONFIG, [*self.base, *sets])
        try:
            with output_to(self.log):
                return run_pipeline(cfg, only=stage, config_path=str(CONFIG))[stage]
        except BaseException:
            with open(self.log, errors="replace") as f:
                print(f"stage {stage} failed; the end of {self.log}:\n{f.read()[-4000:]}", file=sys.stderr)
            raise


def recipe_name(root: str) -> str:
    """The recipe the config's filter stage applies (its selection file's name)."""
    import json

    with open(os.path.join(root, "pool", "manifest.json")) as f:
        return json.load(f)["stages"]["filter"]["recipe"]


def judged(root: str, world_name: str):
    """Every candidate caption of every decodable pool image: uid, source, text, judge score, kept, right."""
    import pandas as pd

    from pipeline.core.layout import Dataset
    from pipeline.stages.caption import read_captions
    from pipeline.synthetic.caption_truth import names_each, names_truth
    from pipeline.synthetic.worlds import get_world

    world = get_world(world_name)
    truth = pd.read_parquet(os.path.join(root, "web", "truth.parquet")).set_index("uid")
    caps = read_captions(Dataset(root, "pool")).to_pandas()
    caps = caps[caps["decodable"] & caps["reason"].isna()]
    sel = pd.read_parquet(os.path.join(root, "pool", "selection", f"{recipe_name(root)}.parquet"),
                          columns=["uid", "kept", "captions"])
    verdict = {(r.uid, c["source"], c["text"]): bool(c["kept"] and r.kept) for r in sel.itertuples()
               for c in r.captions}
    rows = []
    for r in caps.itertuples():
        t = truth.loc[r.uid]
        rows.append((r.uid, "web", r.caption, r.web_score, r.web_probability,
                     verdict.get((r.uid, "web", r.caption), False), t["noise"] in CLEAN, None, None))
        for text, score, p in zip(r.synthetic_captions, r.synthetic_scores, r.synthetic_probabilities, strict=True):
            rows.append((r.uid, "synthetic", text, score, p, verdict.get((r.uid, "synthetic", text), False),
                         names_truth(text, t["colour"], t["shape"], world),
                         *names_each(text, t["colour"], t["shape"], world)))
    return pd.DataFrame(rows, columns=["uid", "source", "text", "score", "probability", "kept", "right",
                                       "colour_right", "shape_right"])


def threshold_sweep(df, levels=(0.5, 0.7, 0.9, 0.95)) -> list[tuple[float, float, int]]:
    """(P(match) threshold, caption noise of the captions at or above it, images keeping one) per level: what a
    stricter capfilt cut would have kept, from the same judged captions."""
    out = []
    for level in levels:
        kept = df[df["probability"] >= level]
        out.append((level, 1 - kept["right"].mean() if len(kept) else float("nan"), kept["uid"].nunique()))
    return out


def quality(root: str, world: str) -> dict:
    """The truth's view of what CapFilt did (see the module docstring)."""
    import json

    from filtering.holdout import auroc
    from pipeline.core.layout import Dataset
    from pipeline.stages.caption import caption_quality
    from pipeline.synthetic.caption_truth import attribute_names, caption_accuracy, read_truth

    df = judged(root, world)
    w, truth = read_truth(os.path.join(root, "web"))
    captioner = caption_quality(None, Dataset(root, "pool"))  # the counts; the accuracy below, with the truth
    caps = df[df["source"] == "synthetic"].groupby("uid", sort=False)["text"].apply(list)
    attrs = caption_accuracy(caps.items(), w, truth)["attributes"]
    shape_name = attribute_names(w)[1]
    web, syn, kept = df[df["source"] == "web"], df[df["source"] == "synthetic"], df[df["kept"]]
    with open(os.path.join(root, "train_filter", "holdout.json")) as f:
        check = json.load(f)
    with open(os.path.join(root, "pool", "selection", f"{recipe_name(root)}.json")) as f:
        cut = json.load(f).get("capfilt_cut") or {}
    auto = (check.get("cut") or {}).get("probability")
    levels = sorted({0.5, 0.7, 0.9, 0.95} | ({round(auto, 3)} if auto is not None else set()))
    return {
        "images": web["uid"].nunique(), "noise_before": 1 - web["right"].mean(),
        "noise_after": 1 - kept["right"].mean(), "kept_captions": len(kept),
        "images_kept": kept["uid"].nunique(), "synthetic_right": syn["right"].mean(),
        "kept_web": int(kept["source"].eq("web").sum()), "kept_synthetic": int(kept["source"].eq("synthetic").sum()),
        "rejected": {s: 1 - df[df["source"] == s]["kept"].mean() for s in ("web", "synthetic")},
        "noise_after_by_source": {s: 1 - kept[kept["source"] == s]["right"].mean() for s in ("web", "synthetic")},
        "true_auroc": auroc(df["score"], df["right"]), "true_auroc_web": auroc(web["score"], web["right"]),
        "true_auroc_synthetic": auroc(syn["score"], syn["right"]),
        "estimated_auroc": check["estimated_auroc"], "estimate_step": check["step"],
        "estimated_auroc_shuffled": check.get("auroc_shuffled", float("nan")),
        "estimated_auroc_near_miss": check.get("auroc_near_miss", float("nan")),
        "near_misses": check.get("near_miss_pairs"), "near_misses_counted": check.get("near_misses_counted"),
        "cut": cut.get("threshold"), "web_cut": cut.get("web_probability"),
        "cut_rule": cut.get("rule") or cut.get("op"), "auto_cut": auto,
        "examples": examples(df), "sweep": threshold_sweep(df, levels),
        "colour_right": attrs["colour"]["accuracy"] if w.colours else float("nan"),
        "shape_right": attrs[shape_name]["accuracy"],
        "chance": {"colour": attrs["colour"]["chance"] if w.colours else float("nan"),
                   "shape": attrs[shape_name]["chance"]},
        "distinct_captions": captioner["distinct_captions"], "images_captioned": captioner["images_captioned"],
    }


def examples(df, n: int = 4) -> list[str]:
    """Images whose web caption was wrong and dropped while a synthetic one was kept, and the reverse."""
    out = []
    for uid in df["uid"].unique():
        rows = df[df["uid"] == uid]
        web, syn = rows[rows["source"] == "web"].iloc[0], rows[rows["source"] == "synthetic"]
        if not web["kept"] and syn["kept"].any() and len(out) < n:
            out.append(f"  web {'x' if not web['right'] else 'ok'} DROPPED {web['text']!r}; synthetic kept: "
                       + "; ".join(f"{t!r} ({'ok' if r else 'x'})" for t, r in zip(syn["text"][syn["kept"]],
                                                                                 syn["right"][syn["kept"]],
                                                                                 strict=True)))
    return out


def run_world(world: str, root: str, sets: list[str], seeds: list[int]) -> dict:
    run = Runner(root, [f"synthetic.world={world}", *sets])
    for stage in SETUP:
        t = time.time()
        res = run(stage)
        extra = ""
        if stage == "train_filter" and res.get("holdout"):
            extra = f"  estimated AUROC {res['holdout']['estimated_auroc']:.3f} (step {res['holdout']['step']})"
        if stage == "train_filter" and res.get("holdout", {}).get("auroc_near_miss") is not None:
            extra += f", vs near misses {res['holdout']['auroc_near_miss']:.3f}"
        if stage == "filter":
            extra = f"  kept {res['kept']} of {res['samples']} images"
            if res.get("capfilt_cut"):
                c = res["capfilt_cut"]
                web = f", web {c['web_probability']:.3f}" if c.get("web_probability") is not None else ""
                extra += f" (cut P(match) >= {c['threshold']:.3f}{web}, {c.get('rule')})"
        print(f"  {stage:16s} {time.time() - t:6.1f}s{extra}", flush=True)
    q = quality(root, world)
    top1: dict[str, list[float]] = {"capfilt": [], "web": []}
    for seed in seeds:
        for arm, stage in (("capfilt", "train"), ("web", "train_web")):  # interleaved: machine load hits both
            res = run(stage, f"{stage}.output={stage}_seed{seed}", f"{stage}.seed={seed}", f"{stage}.data.seed={seed}")
            top1[arm].append(100 * res["eval"]["zeroshot"]["top1"])
        print(f"  seed {seed}: capfilt {top1['capfilt'][-1]:5.1f}  web only {top1['web'][-1]:5.1f}  "
              f"gain {top1['capfilt'][-1] - top1['web'][-1]:+5.1f} points", flush=True)
    return {**q, "top1": top1, "gains": [c - w for c, w in zip(top1["capfilt"], top1["web"], strict=True)]}


def pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # NaN: the world has no colours


def report(world: str, r: dict) -> list[str]:
    lines = [f"\n### world `{world}`", "",
             "| | value |", "|---|---:|",
             f"| decodable pool images | {r['images']} |",
             f"| caption noise before (web captions) | {r['noise_before']:.1%} |",
             f"| synthetic captions right before filtering | {r['synthetic_right']:.1%} |",
             f"| distinct synthetic captions / images captioned | {r['distinct_captions']} / "
             f"{r['images_captioned']} |",
             f"|   naming the right colour / the right shape or class (chance) | {pct(r['colour_right'])} "
             f"({pct(r['chance']['colour'])}) / {r['shape_right']:.1%} ({r['chance']['shape']:.1%}) |",
             f"| caption noise after CapFilt (kept captions) | **{r['noise_after']:.1%}** |",
             f"|   of kept web captions / of kept synthetic | {r['noise_after_by_source']['web']:.1%} / "
             f"{r['noise_after_by_source']['synthetic']:.1%} |",
             f"| captions kept: web / synthetic | {r['kept_web']} / {r['kept_synthetic']} |",
             f"| rejected by the filter: web / synthetic | {r['rejected']['web']:.1%} / "
             f"{r['rejected']['synthetic']:.1%} |",
             f"| images keeping >= 1 caption | {r['images_kept']} ({r['images_kept'] / r['images']:.1%}) |",
             f"| filter AUROC: estimated (no labels, step {r['estimate_step']}) / true (all captions) / true "
             f"(web) | {r['estimated_auroc']:.3f} / {r['true_auroc']:.3f} / {r['true_auroc_web']:.3f} |",
             f"| estimated vs shuffled / vs {r['near_misses']} near misses (counted: {r['near_misses_counted']}) "
             f"| {r['estimated_auroc_shuffled']:.3f} / {r['estimated_auroc_near_miss']:.3f} |",
             f"| true AUROC on synthetic captions | {r['true_auroc_synthetic']:.3f} |",
             f"| cut used ({r['cut_rule']}) / held-out best cut | P(match) >= {r['cut']} / "
             f"{'-' if r['auto_cut'] is None else format(r['auto_cut'], '.3f')} |",
             f"| web captions' cut (auto: vs unrelated captions only) | "
             f"{'-' if r['web_cut'] is None else format(r['web_cut'], '.3f')} |",
             f"| zero-shot top-1 CapFilt, per seed | {', '.join(f'{v:.1f}' for v in r['top1']['capfilt'])} |",
             f"| zero-shot top-1 web only, per seed | {', '.join(f'{v:.1f}' for v in r['top1']['web'])} |",
             f"| CapFilt | {spread(r['top1']['capfilt'])} |", f"| web only | {spread(r['top1']['web'])} |",
             f"| **gain (points)** | **{spread(r['gains'])}** |", "",
             "a stricter cut on the same judged captions (P(match) >= level): " + "; ".join(
                 f"{lv}: noise {n:.1%}, {k} images" for lv, n, k in r["sweep"]), "", "examples:", *r["examples"]]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="both worlds, the config's web and steps, 3 seeds")
    ap.add_argument("--worlds", nargs="+", choices=["shapes", "objects", "fashion"],
                    help="default: shapes (--full: shapes and objects); fashion needs `make fashion-data`")
    ap.add_argument("--seeds", type=int, default=None, help="final-encoder seeds per arm (default 2, --full 3)")
    ap.add_argument("--workdir", default=None, help="folder for the run roots (kept; default: a temp dir, removed)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/capfilt_bootstrap.yaml (repeatable), e.g. "
                         "caption.decoding.strategy=greedy or train_captioner.steps=600")
    args = ap.parse_args()
    worlds = args.worlds or (["shapes", "objects"] if args.full else ["shapes"])
    for world in worlds:
        require_world(world)
    seeds = list(range(args.seeds or (3 if args.full else 2)))
    os.environ.pop("RAY_ADDRESS", None)  # an embedded local Ray: this bench never attaches to a cluster
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    base = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bench-capfilt-")
    sets = IN_PROCESS + ([] if args.full else SMALL) + args.sets
    t0, results = time.time(), {}
    try:
        print(f"machine: {machine()}")
        print(f"config {CONFIG.relative_to(REPO)}{' (--full)' if args.full else ' (small: ' + ' '.join(SMALL) + ')'}"
              f"{' ' + ' '.join(args.sets) if args.sets else ''}"
              f"; worlds {worlds}; final-encoder seeds {seeds}; run roots under {base}", flush=True)
        for world in worlds:
            print(f"\nworld {world}:", flush=True)
            results[world] = run_world(world, os.path.join(base, world), sets, seeds)
            print("\n".join(report(world, results[world])), flush=True)
        noise = statistics.mean(r["noise_after"] for r in results.values())
        error = max(abs(r["estimated_auroc"] - r["true_auroc"]) for r in results.values())
        gain = statistics.mean(g for r in results.values() for g in r["gains"])
        print(f"\nwall time {time.time() - t0:.0f}s")
        print(result_line("capfilt_caption_noise_after", noise, "<=", 0.15))
        print(result_line("capfilt_auroc_estimate_error", error, "<=", 0.1))
        print(result_line("capfilt_top1_gain", gain, ">=", 3))
    finally:
        end_embedded_run(base, keep=bool(args.workdir))


if __name__ == "__main__":
    main()
