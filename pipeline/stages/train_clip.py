"""The train-clip stage: pretrain an image-text encoder (CLIP / SigLIP / CoCa / CatLIP) on a dataset's shards.

    winnow run configs/demo.yaml --stage train_encoder

Input: the complete shards of dataset `input` (or `data.input_shards`, a glob/brace pattern). Output, under
`<root>/<output>/` (default: the stage's name): `checkpoints/step_*`, `metrics.csv`, `tb/`, `curves.png`,
`model.pt` (open_clip-loadable: `open_clip.create_model_and_transforms(name, pretrained=".../model.pt")`,
after `pipeline.core.model_configs.register_model_configs()` for our tiny configs), `eval.json` and `train.json`.
Rerunning the command resumes from the newest checkpoint; a run that already reached its steps with the same
config is not started again (`pipeline.stages.finished`). With no evaluation set configured and a synthetic web in
the pipeline config, the web's held-out test set is the zero-shot and retrieval evaluation.

With `holdout: {fraction: 0.1}` (a bootstrap's filter) part of the input is held back by uid hash and the model is
measured there as a filter, without ground truth (`filtering.holdout`): the estimated AUROC is in the summary, the
manifest, train.json, `holdout.json` and the report, model.pt holds the evaluated weights with the best estimate,
and an estimate below `holdout.warn_below` is a warning that says what to try.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.config import ConfigError, config_hash
from pipeline.core.layout import join, write_json_atomic
from pipeline.core.storage import exists
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext
from pipeline.stages.finished import finished_record, skip_finished
from training.contrastive.config import EvalConfig, RetrievalConfig, TrainConfig, ZeroShotConfig

log = logging.getLogger(__name__)


class TrainClipConfig(StageConfig, TrainConfig):
    """`input`: the dataset whose shards train the model; `output`: the model directory (default: stage name)."""


CONFIG = TrainClipConfig
PRODUCES = "encoder"  # `<output>/model.pt`, which a score stage may use (`model_from`)
WEIGHTS = "model.pt"


def input_shards(ctx: StageContext, cfg: TrainClipConfig) -> list[str]:
    from training.contrastive.data import NoShardsError, expand_shards

    if cfg.data.input_shards:
        try:
            return expand_shards(cfg.data.input_shards)
        except NoShardsError as err:
            raise ConfigError(f"stages.{ctx.stage}.data.input_shards: {err}") from None
    if not cfg.input:
        raise ConfigError(f"stages.{ctx.stage}: set `input` (a dataset name) or `data.input_shards` (a pattern)")
    ds = ctx.dataset(cfg.input)
    # damaged shards (or changed sources of an ingest in place) are reported before training
    shards = [ds.shard_source(s, "tar", rec) for s, rec in ds.intact_shards().items()]
    if not shards:
        raise ConfigError(f"stages.{ctx.stage}.input: dataset {cfg.input!r} has no complete shards "
                          f"(no shard matches {ds.sub('shards', '*.tar')!r} with a _done marker)")
    return shards


def default_eval(ctx: StageContext, cfg: EvalConfig) -> EvalConfig:
    """The synthetic web's held-out set, when the config names no evaluation set and the pipeline has a web."""
    if cfg.zeroshot or cfg.retrieval or not cfg.synthetic_test or ctx.pipeline.synthetic is None:
        return cfg
    test = join(ctx.pipeline.synthetic_dir(), "test")
    if not exists(join(test, "classnames.json")):
        return cfg
    pattern = join(test, "*.tar")
    return cfg.model_copy(update={
        "zeroshot": ZeroShotConfig(shards=pattern, classnames=join(test, "classnames.json")),
        "retrieval": RetrievalConfig(shards=pattern)})


def run(ctx: StageContext, cfg: TrainClipConfig) -> dict[str, Any]:
    from pipeline.core.tables import fmt_seconds, print_summary
    from training.contrastive.task import ContrastiveTask
    from training.engine import fit

    out_dir = ctx.path(ctx.output)
    shards = input_shards(ctx, cfg)
    done = finished_record(out_dir, cfg, cfg.steps)
    if done:  # nothing to train, evaluate or export: no Ray Train started (pipeline.stages.finished)
        return skip_finished(ctx.stage, out_dir, done, cfg.steps, eval_rows(done["eval"]))
    train_cfg = TrainConfig.model_validate(cfg.model_dump(exclude={"kind", "input", "output"}))
    train_cfg = train_cfg.model_copy(update={"eval": default_eval(ctx, train_cfg.eval)})
    cluster = ctx.init_ray() if train_cfg.scaling.num_workers > 0 else {}
    probe = holdout_probe(ctx, train_cfg, shards)
    result = fit(ContrastiveTask(train_cfg, shards, probe), train_cfg, out_dir)  # its config is also the engine's
    check = result.get("holdout")

    record = {"kind": "train-clip", "config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg),
              "input": {"dataset": cfg.input, "shards": len(shards)}, "cluster": cluster, **result}
    write_json_atomic(join(out_dir, "train.json"), record)
    # The model dir's manifest section is what `winnow status` reads, as for the datasets.
    ctx.dataset(ctx.output).update_manifest(ctx.stage, {
        "kind": "train-clip", "state": "complete" if result["step"] >= cfg.steps else "partial",
        "steps": {"done": result["step"], "total": cfg.steps}, "samples": result["samples_seen"],
        "world": result.get("world"), "resumes": result.get("resumes", []),
        "wall_seconds": round(result["seconds"], 2), "config_hash": record["config_hash"],
        "zeroshot_top1": (result["eval"].get("zeroshot") or {}).get("top1"),
        **({"estimated_auroc": check["estimated_auroc"], "holdout_step": check["step"],
            "holdout_warning": check.get("warning")} if check else {})})
    rows: list[tuple[str, Any]] = [
        ("model", f"{cfg.model.name} ({cfg.objective})"),
        ("steps", f"{result['step']}/{cfg.steps} ({result['samples_seen']} samples)"),
        ("workers", f"{result.get('world') or cfg.scaling.num_workers} x {cfg.scaling.cpus_per_worker} CPU, "
                    f"{cfg.scaling.gpus_per_worker} GPU (configured {cfg.scaling.num_workers}"
                    + (f", at least {cfg.scaling.min_workers})" if cfg.scaling.min_workers else ")")),
        ("wall time", fmt_seconds(result["seconds"])),
        ("final loss", f"{result['metrics'].get('loss', float('nan')):.4f}"),
    ]
    rows += eval_rows(result["eval"])
    if result.get("resumes"):  # after a lost worker or node: from which step, with how many workers
        rows.append(("resumed", ", ".join(f"from step {r['step']} with {r['world'] or '?'} workers"
                                          for r in result["resumes"])))
    rows += holdout_rows(check)
    rows.append(("weights", result["weights"]))
    print_summary(f"stage {ctx.stage}", rows)
    if check and check.get("warning"):
        log.warning("%s: %s", ctx.stage, check["warning"])
    return {"output": out_dir, **{k: v for k, v in record.items() if k != "config"}}


def eval_rows(ev: dict) -> list[tuple[str, str]]:
    """The summary's zero-shot and retrieval lines."""
    zs, rt, rows = ev.get("zeroshot", {}), ev.get("retrieval", {}), []
    if zs:
        rows.append(("zero-shot", f"top-1 {zs['top1']:.1%}, top-5 {zs['top5']:.1%} "
                                  f"(chance {zs['chance']:.1%}, {zs['samples']} images)"))
    if rt:
        rows.append(("retrieval", f"image->text R@1 {rt['image_to_text_R@1']:.1%}, "
                                  f"text->image R@1 {rt['text_to_image_R@1']:.1%}"))
    return rows


def holdout_probe(ctx: StageContext, cfg, shards: list[str]):
    """The held-out pairs of a run with `holdout` (read from its shards once, here on the driver), else None."""
    if cfg.holdout is None:
        return None
    from filtering.holdout import HoldoutProbe, HoldoutSplit

    h = cfg.holdout
    probe = HoldoutProbe.from_shards(shards, HoldoutSplit(h.fraction, h.seed), h.max_pairs, h.junk_images,
                                     h.warn_below, h.near_misses)
    if len(probe) < 2:
        raise ConfigError(f"stages.{ctx.stage}.holdout: {len(probe)} held-out pairs with a decodable image and a "
                          f"caption in {len(shards)} shards; raise holdout.fraction or add data")
    return probe


def holdout_rows(check: dict | None) -> list[tuple[str, Any]]:
    """The summary's lines on the filter check."""
    if not check:
        return []
    kinds = "shuffled/junk" + ("/near-miss" if check.get("near_misses_counted") else "")
    rows: list[tuple[str, Any]] = [(
        "filter check", f"estimated AUROC {check['estimated_auroc']:.3f} on {check['pairs']} held-out pairs vs "
                        f"{check.get('negatives', '?')} {kinds} (step {check['step']} chosen; last step "
                        f"{check['last_step_auroc']:.3f})")]
    if check.get("auroc_near_miss") is not None:
        rows.append(("  near misses", f"AUROC {check['auroc_near_miss']:.3f} vs {check.get('near_miss_pairs')} "
                                      f"one-word swaps (shuffled: {check['auroc_shuffled']:.3f})"))
    if check.get("platt"):
        rows.append(("  calibration", f"p(match) = 0.5 at cosine {check['platt']['threshold_score']:.3f}"))
    cut = check.get("cut")
    if cut and cut.get("probability") is not None:
        rows.append(("  best cut", f"P(match) >= {cut['probability']:.3f} (cosine {cut['score']:.3f}): balanced "
                                   f"accuracy {cut['balanced_accuracy']:.3f}, at 0.5: "
                                   f"{cut.get('balanced_accuracy_at_half') or float('nan'):.3f}"))
    if check.get("warning"):
        rows.append(("  WARNING", check["warning"]))
    return rows


def evaluate(ctx: StageContext, cfg: TrainClipConfig, out: str | None = None) -> dict[str, Any]:
    """Evaluate this stage's trained model (`winnow eval CONFIG`): its final weights on its configured sets (or
    the synthetic web's held-out set); writes `<model dir>/eval.json` unless `out` names another file."""
    from training.contrastive.eval import run_eval

    model_dir = ctx.path(ctx.output)
    weights = join(model_dir, WEIGHTS)
    if not exists(weights):
        raise ConfigError(f"stages.{ctx.stage}: no trained weights at {weights}; run the stage first")
    eval_cfg = default_eval(ctx, cfg.eval)
    if not (eval_cfg.zeroshot or eval_cfg.retrieval):
        raise ConfigError(f"stages.{ctx.stage}.eval: no evaluation set (set eval.zeroshot or eval.retrieval)")
    return run_eval(eval_cfg, cfg.model.name, weights, out=out or join(model_dir, "eval.json"),
                    catlip_dir=model_dir if cfg.objective == "catlip" else None)


def eval_row(cfg: TrainClipConfig, res: dict) -> dict[str, str]:
    """This stage's row in `winnow eval`'s table."""
    zs, rt = res.get("zeroshot") or {}, res.get("retrieval") or {}
    return {"model": cfg.model.name, "top-1": f"{zs['top1']:.1%}" if zs else "-",
            "top-5": f"{zs['top5']:.1%}" if zs else "-", "chance": f"{zs['chance']:.1%}" if zs else "-",
            "i->t R@1": f"{rt['image_to_text_R@1']:.1%}" if rt else "-",
            "t->i R@1": f"{rt['text_to_image_R@1']:.1%}" if rt else "-"}
