"""winnow's command line (`winnow` = `python -m pipeline`).

    winnow run configs/demo.yaml                      # every stage, resuming finished shards
    winnow run configs/demo.yaml --stage download --set download.thread_count=16
    winnow status configs/demo.yaml
    winnow synth configs/demo.yaml                    # only make the synthetic web
    winnow eval configs/demo.yaml --stage train       # zero-shot + retrieval of a trained encoder
    winnow report configs/demo.yaml
    winnow export-subset configs/demo.yaml --stage filter --out subset.npy   # kept uids, DataComp's format
    winnow sample configs/demo.yaml --stage generator --prompt "a red circle" --n 8 --out samples/
    winnow caption configs/demo.yaml --stage caption photos/*.jpg --out captions.jsonl
    winnow submit --address http://HEAD:8265 configs/demo.yaml --follow
    winnow jobs --address http://HEAD:8265 ; winnow stop --address http://HEAD:8265 JOB_ID
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.core.config import ConfigError
from pipeline.core.errors import WinnowError


def _config_args(p: argparse.ArgumentParser, stage: bool = True) -> None:
    p.add_argument("config", help="pipeline config (YAML)")
    if stage:
        p.add_argument("--stage", help="run only this stage (its key in `stages:`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. download.thread_count=16 (repeatable)")


def _source_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--stage", help=f"the {kind} stage of CONFIG whose trained model to use")
    p.add_argument("--checkpoint", help="a model trained elsewhere, instead of CONFIG --stage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of CONFIG (repeatable)")


def _model_args(sub) -> None:
    """`winnow sample` and `winnow caption`: a trained model from a stage of CONFIG, or from --checkpoint."""
    p = sub.add_parser("sample", help="images from a trained generator: PNGs per prompt and seed, a grid, settings")
    p.add_argument("config", nargs="?", help="pipeline config (YAML), with --stage")
    _source_args(p, "train-diffusion")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line")
    p.add_argument("--n", type=int, default=8, help="images per prompt (default 8)")
    p.add_argument("--seed", type=int, default=0, help="the first image's seed; image k uses seed + k (default 0)")
    p.add_argument("--sampler", choices=["euler", "heun", "ddim", "euler_maruyama"], help="default: the stage's")
    p.add_argument("--steps", type=int, help="sampler steps (default: the stage's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the stage's)")
    p.add_argument("--temperature", type=float, help="a flow's sampling temperature (default: the stage's)")
    p.add_argument("--encoder", help="the conditioning encoder's weights or open_clip folder, if moved")
    p.add_argument("--batch-size", type=int, default=16, help="images sampled together (default 16)")
    p.add_argument("--out", required=True, help="folder for the PNGs, grid.png and samples.json")
    p = sub.add_parser("caption", help="captions for images from a trained captioner (JSON lines)")
    p.add_argument("paths", nargs="*", metavar="[CONFIG] IMAGE",
                   help="with --stage: the pipeline config, then image files; with --checkpoint: image files")
    _source_args(p, "caption (or train-clip CoCa)")
    p.add_argument("--images", metavar="DIR", help="caption every image file under DIR")
    p.add_argument("--out", help="write JSON lines here (default: stdout)")
    p.add_argument("--judge", help="a train-clip stage of CONFIG, a BLIP ITM or open_clip folder, or weights, that "
                                   "scores each caption (default: the caption stage's)")
    p.add_argument("--calibration", help="a holdout.json whose Platt fit turns the judge's score into P(match)")
    p.add_argument("--model", help="the open_clip model of a --checkpoint weights file without model_config.json")
    p.add_argument("--strategy", choices=["greedy", "beam", "nucleus"], help="default: the stage's decoding")
    p.add_argument("--num-captions", type=int, help="captions per image")
    p.add_argument("--seed", type=int, help="nucleus sampling's seed")
    p.add_argument("--decoding", action="append", metavar="KEY=VALUE", help="any decoding setting, e.g. top_p=0.8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline's stages in order (or one with --stage)")
    _config_args(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for another run using the same datasets to finish (default: fail)")
    p.add_argument("--break-lock", action="store_true",
                   help="take over dataset locks held by another run (only when you know it is gone)")
    p.add_argument("--stale-lock-after", type=float, default=None, metavar="SECONDS",
                   help="take over a lock held from another host when it is older than this")
    _config_args(sub.add_parser("status", help="per stage: shards done/total, samples, success rate, wall time"),
                 stage=False)
    _config_args(sub.add_parser("synth", help="make the synthetic web without running the pipeline"), stage=False)
    _config_args(sub.add_parser("eval", help="zero-shot and retrieval evaluation of a trained encoder"))
    _config_args(sub.add_parser("report", help="rebuild the HTML report"), stage=False)
    p = sub.add_parser("export-subset", help="a filter stage's kept uids as a DataComp subset file (.npy, u8,u8)")
    _config_args(p, stage=False)
    p.add_argument("--stage", required=True, help="the filter stage whose selection to export")
    p.add_argument("--out", required=True, help="the .npy file to write (any fsspec path)")
    _model_args(sub)
    p = sub.add_parser("submit", help="submit the run to a Ray cluster as a job")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--pip", action="append", default=None, help="extra pip requirement for the cluster")
    _config_args(p)
    p = sub.add_parser("jobs", help="list winnow jobs on a cluster")
    p.add_argument("--address", required=True)
    p = sub.add_parser("stop", help="stop a submitted job")
    p.add_argument("--address", required=True)
    p.add_argument("job_id")
    return parser


def _load(args: argparse.Namespace):
    from pipeline.pipeline_config import load_pipeline_config

    return load_pipeline_config(args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "caption" and not any(e.startswith("-") for e in extra):
        args.paths += extra  # images after the options: `winnow caption CONFIG --stage caption a.jpg b.jpg`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "filelock", "urllib3", "matplotlib", "PIL", "fsspec", "open_clip", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        return _dispatch(args)
    except ConfigError as err:
        print(f"config error:\n{err}", file=sys.stderr)
        return 2
    except WinnowError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `winnow status ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to continue", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from pipeline.cli.run import LockOptions, run_log_path, run_pipeline
        from pipeline.runtime import start_run_log

        cfg = _load(args)
        if not args.verbose:
            print(f"log: {start_run_log(run_log_path(cfg))}", flush=True)
        run_pipeline(cfg, args.stage, config_path=args.config,
                     locks=LockOptions(args.wait, args.stale_lock_after, args.break_lock))
        return 0
    if args.command == "status":
        from pipeline.cli.status import print_status

        print_status(_load(args))
        return 0
    if args.command == "synth":
        from pipeline.synthetic.config import SyntheticWebConfig
        from pipeline.synthetic.web import build_web

        cfg = _load(args)
        info = build_web(cfg.synthetic or SyntheticWebConfig(), cfg.synthetic_dir())
        print(f"synthetic web at {cfg.synthetic_dir()}: {info.get('counts', info)}")
        return 0
    if args.command == "eval":
        from pipeline.cli.evaluate import evaluate_stage

        evaluate_stage(_load(args), args.stage, config_path=args.config)
        return 0
    if args.command == "report":
        from pipeline.report import build_report

        print(build_report(_load(args)))
        return 0
    if args.command == "export-subset":
        from pipeline.cli.export_subset import export_subset

        export_subset(_load(args), args.stage, args.out, config_path=args.config)
        return 0
    if args.command in ("sample", "caption"):
        return _model_command(args)
    from pipeline.cli import jobs

    if args.command == "submit":
        return jobs.submit(args.address, args.config, args.stage, args.overrides, follow=args.follow,
                           extra_pip=args.pip)
    if args.command == "jobs":
        return jobs.list_jobs(args.address)
    if args.command == "stop":
        return jobs.stop(args.address, args.job_id)
    raise AssertionError(args.command)


def _model_command(args: argparse.Namespace) -> int:
    """`winnow sample` / `winnow caption`: exactly one of CONFIG --stage and --checkpoint."""
    if args.command == "caption":
        args.config = args.paths[0] if args.stage and args.paths else None
        args.files = args.paths[1:] if args.stage else args.paths
    if bool(args.stage) == bool(args.checkpoint):
        raise ConfigError(f"winnow {args.command}: give CONFIG --stage NAME, or --checkpoint PATH (exactly one)")
    if args.checkpoint and (args.config or args.overrides):
        raise ConfigError(f"winnow {args.command}: --checkpoint takes no CONFIG and no --set")
    if args.stage and not args.config:
        raise ConfigError(f"winnow {args.command}: --stage names a stage of a pipeline config: give CONFIG")
    pipeline = _load(args) if args.stage else None
    if args.command == "sample":
        from pipeline.cli.sample import sample_command

        return sample_command(args, pipeline)
    from pipeline.cli.caption import caption_command

    return caption_command(args, pipeline)


if __name__ == "__main__":
    sys.exit(main())
