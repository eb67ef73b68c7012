"""`winnow caption`: images -> captions from a trained captioner, through the code the caption stage runs.

    winnow caption configs/demo.yaml --stage caption photos/*.jpg                 # the stage's captioner, judge
    winnow caption configs/demo.yaml --stage train_captioner --images photos/ --judge train_filter
    winnow caption --checkpoint blip-captioning-base/ --images photos/ --num-captions 3 --out captions.jsonl

One JSON line per image, in the order given (a folder's image files sorted by name, recursively): its `path`,
`captions`, the `decoding` settings and the captioner's checkpoint hash; with a judge, each caption's `scores` and,
when the judge is calibrated (a train-clip stage trained with `holdout:`, `--calibration`, or BLIP's ITM),
`probabilities` (P(match)). A file that does not decode is a line with its `reason` and no captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.core.config import ConfigError
from pipeline.core.images import IMAGE_EXTS


def image_paths(files: list[str], folder: str | None) -> list[str]:
    """The files as given, then the image files under `folder` (by extension, sorted)."""
    out = list(files or [])
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"--images {folder}: no such folder")
        out += [str(p) for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS]
    if not out:
        raise ConfigError("no image: give image files, or --images DIR")
    return out


def decoding_overrides(args) -> dict:
    """--strategy, --num-captions, --seed and each --decoding KEY=VALUE (YAML values), as decoding settings."""
    out = {k: v for k, v in (("strategy", args.strategy), ("num_captions", args.num_captions), ("seed", args.seed))
           if v is not None}
    for item in args.decoding or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--decoding {item!r}: expected KEY=VALUE, e.g. --decoding top_p=0.8")
        out[key.strip()] = yaml.safe_load(value)
    return out


def caption_command(args, pipeline=None) -> int:
    """`winnow caption`: arguments -> the models (`pipeline.stages.models`) -> JSON lines to --out or stdout."""
    from pipeline.core.layout import atomic_write
    from pipeline.stages.models import Source, caption_files, captioner_from

    paths = image_paths(args.files, args.images)
    models = captioner_from(Source(pipeline, args.stage, args.checkpoint, args.config), judge=args.judge,
                            calibration=args.calibration, model=args.model, decoding=decoding_overrides(args))
    rows = caption_files(models, paths)
    if not args.out:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    done = failed = 0
    with atomic_write(args.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            done, failed = done + 1, failed + (not row["captions"])
    print(f"{done} images into {args.out} ({failed} without a caption: see their `reason`)")
    return 0
