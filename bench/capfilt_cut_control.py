"""The control for CapFilt's per-source cut: the same judged captions cut at one P(match) for web and synthetic
captions alike (the auto rule before web captions got their own cut), resharded and trained with the same seeds.

    python bench/capfilt_quality.py --worlds objects --seeds 3 --workdir /tmp/cf   # keeps the run roots
    python bench/capfilt_cut_control.py --root /tmp/cf/objects --world objects --seeds 3

The single cut is the synthetic captions' auto cut of that run (read from its selection JSON). Prints the kept
images and each seed's zero-shot top-1, to set beside the bench's CapFilt row for the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capfilt_quality import IN_PROCESS, SMALL, Runner, recipe_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="a world's run root kept by capfilt_quality.py --workdir")
    ap.add_argument("--world", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the run used --full (the config's own web and steps)")
    args = ap.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    with open(os.path.join(args.root, "pool", "selection", f"{recipe_name(args.root)}.json")) as f:
        cut = json.load(f)["capfilt_cut"]["threshold"]
    recipe = os.path.join(args.root, "capfilt_one_cut.yaml")
    with open(recipe, "w") as f:
        f.write(f"description: one P(match) cut for web and synthetic captions\nops:\n"
                f"  - capfilt: {{min_probability: {cut}}}\n")
    run = Runner(args.root, [f"synthetic.world={args.world}", *IN_PROCESS, *([] if args.full else SMALL)])
    res = run("filter", f"filter.recipe={recipe}")
    print(f"{args.world}: one cut P(match) >= {cut:.3f} keeps {res['kept']} of {res['samples']} images", flush=True)
    run("reshard", f"reshard.recipe={recipe}", "reshard.output=capfilt_one_cut")
    top1 = []
    for seed in range(args.seeds):
        r = run("train", "train.input=capfilt_one_cut", f"train.output=one_cut_seed{seed}", f"train.seed={seed}",
                f"train.data.seed={seed}")
        top1.append(100 * r["eval"]["zeroshot"]["top1"])
        print(f"  seed {seed}: one cut {top1[-1]:5.1f}", flush=True)
    print(f"one cut, zero-shot top-1: {', '.join(f'{v:.1f}' for v in top1)}")


if __name__ == "__main__":
    main()
