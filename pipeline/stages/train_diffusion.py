"""The train-diffusion stage: a text-to-image generator (an MMDiT; rectified flow, EDM, VP or VE) on a dataset's
shards, conditioned on the frozen text tower of a train-clip stage of the same pipeline.

    winnow run configs/demo.yaml --stage generator
    winnow eval configs/demo.yaml --stage generator

Input: the complete shards of dataset `input` (or `data.input_shards`). Output, under `<root>/<output>/` (default:
the stage's name): `checkpoints/step_*` (with the EMA weights), `metrics.csv` (loss per flow-time bin included),
`tb/`, `curves.png`, `samples/step_*.png` (grids from the EMA weights, fixed prompts and seeds),
`generator.safetensors` + `generator.json` (the EMA weights; network, image space, objective and the encoder's
sha256), `eval.json` and `train.json`. Rerunning resumes from the newest checkpoint.

Evaluation (after training, and `winnow eval`) uses encoders other than the conditioning one: the judge
(`eval.judge_from`, default: the first other train-clip stage) classifies samples of "a {colour} {shape}" zero-shot
and scores image-text alignment; the Frechet distance uses `eval.features_from` (default: the judge). With a
synthetic web in the pipeline its held-out test set is the real reference and the class list.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from pipeline.core.config import ConfigError, config_hash
from pipeline.core.layout import join, write_json_atomic
from pipeline.core.storage import exists
from pipeline.stages import stage_module
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext
from training.generative.config import EncoderRef, GenerativeEvalConfig
from training.generative.diffusion.config import DiffusionTrainConfig


class TrainDiffusionConfig(StageConfig, DiffusionTrainConfig):
    """`input`: the dataset whose shards train the generator; `output`: the model directory (default: stage name)."""

    encoder_from: str | None = Field(None, description="a train-clip stage of this pipeline whose frozen text tower "
                                                       "conditions the generator (or give `encoder`)")

    @model_validator(mode="after")
    def _one_encoder(self) -> TrainDiffusionConfig:
        if (self.encoder_from is None) == (self.encoder is None):
            raise ValueError("give `encoder_from` (a train-clip stage) or `encoder` ({name, weights}), exactly one")
        return self


CONFIG = TrainDiffusionConfig
PRODUCES = "generator"
WEIGHTS = "generator.safetensors"


def _encoder_stage(ctx: StageContext, name: str, key: str):
    """The train-clip stage `name` (named by this stage's `key`), or a ConfigError naming both."""
    known = ctx.pipeline.stages_producing("encoder")
    where = f"{ctx.config_path or 'config'}: stages.{ctx.stage}.{key}"
    if name not in known:
        raise ConfigError(f"{where}: {name!r} is not a stage of this pipeline that trains an encoder (those: "
                          f"{', '.join(known) or 'none'})")
    stage = ctx.pipeline.stages[name]
    if key == "encoder_from" and stage.objective == "catlip":
        raise ConfigError(f"{where}: stages.{name} trains CatLIP (objective catlip), whose text tower is never "
                          "trained: condition on a clip, siglip or coca stage")
    return stage


def _judge_name(ctx: StageContext, cfg: TrainDiffusionConfig) -> str | None:
    """eval.judge_from, else the first train-clip stage of the pipeline that does not condition the generator."""
    if cfg.eval.judge is not None:
        return None
    if cfg.eval.judge_from:
        return cfg.eval.judge_from
    others = [s for s in ctx.pipeline.stages_producing("encoder") if s != cfg.encoder_from]
    return others[0] if others else None


def preflight(ctx: StageContext, cfg: TrainDiffusionConfig) -> None:
    """Before any stage runs: the encoder stages exist and differ; the autoencoder folder fits the latent config."""
    from training.generative.diffusion.task import check_latent

    if cfg.encoder_from:
        _encoder_stage(ctx, cfg.encoder_from, "encoder_from")
    judge = _judge_name(ctx, cfg)
    if judge is not None:
        _encoder_stage(ctx, judge, "eval.judge_from")
        if judge == cfg.encoder_from:
            raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}.eval.judge_from: {judge!r} is the "
                              "conditioning encoder (encoder_from); judge samples with an encoder that did not "
                              "condition them")
    if cfg.eval.features_from:
        _encoder_stage(ctx, cfg.eval.features_from, "eval.features_from")
    check_latent(cfg, f"stages.{ctx.stage}")


def _ref(ctx: StageContext, name: str, key: str) -> EncoderRef:
    stage = _encoder_stage(ctx, name, key)
    weights = ctx.path(ctx.pipeline.output_of(name), stage_module(stage.kind).WEIGHTS)
    if not exists(weights):
        raise ConfigError(f"stages.{ctx.stage}.{key}: {weights} does not exist; run stage {name!r} first")
    return EncoderRef(name=stage.model.name, weights=weights, source=f"stages.{name} (model.name {stage.model.name})")


def default_eval(ctx: StageContext, cfg: TrainDiffusionConfig) -> GenerativeEvalConfig:
    """The judge and feature encoders resolved to weights; the synthetic web's test set when none is given."""
    ev = cfg.eval
    update: dict[str, Any] = {}
    judge = _judge_name(ctx, cfg)
    if judge is not None:
        update["judge"], update["judge_from"] = _ref(ctx, judge, "eval.judge_from"), None
    if ev.features_from:
        update["features"] = _ref(ctx, ev.features_from, "eval.features_from")
        update["features_from"] = None
    if ev.heldout is None and ev.synthetic_test and ctx.pipeline.synthetic is not None:
        test = join(ctx.pipeline.synthetic_dir(), "test")
        if exists(join(test, "classnames.json")):
            update["heldout"] = join(test, "*.tar")
            update["classnames"] = ev.classnames or join(test, "classnames.json")
    return ev.model_copy(update=update)


def resolve(ctx: StageContext, cfg: TrainDiffusionConfig) -> DiffusionTrainConfig:
    """The task's config: the stage keys dropped, the encoders resolved to weights files."""
    train_cfg = DiffusionTrainConfig.model_validate(
        cfg.model_dump(exclude={"kind", "input", "output", "encoder_from"}))
    encoder = cfg.encoder or _ref(ctx, cfg.encoder_from, "encoder_from")
    ev = default_eval(ctx, cfg)
    if ev.judge is not None and ev.judge.weights == encoder.weights:
        raise ConfigError(f"stages.{ctx.stage}.eval.judge: {ev.judge.weights} is the conditioning encoder's "
                          "checkpoint; judge samples with an encoder that did not condition them")
    return train_cfg.model_copy(update={"encoder": encoder, "eval": ev})


def make_task(cfg: DiffusionTrainConfig, shards: list[str], where: str):
    """The engine task that trains `model.kind`: the MMDiT denoiser now; another generator family (normalizing
    flows) is one more kind in the model config and one more branch here."""
    if cfg.model.kind == "mmdit":
        from training.generative.diffusion.task import DiffusionTask

        return DiffusionTask(cfg, shards, where=where)
    raise ConfigError(f"{where}.model.kind: no task trains {cfg.model.kind!r}")


def run(ctx: StageContext, cfg: TrainDiffusionConfig) -> dict[str, Any]:
    from pipeline.core.tables import fmt_seconds, print_summary
    from pipeline.stages.train_clip import input_shards
    from training.engine import fit

    out_dir = ctx.path(ctx.output)
    shards = input_shards(ctx, cfg)
    train_cfg = resolve(ctx, cfg)
    cluster = ctx.init_ray() if train_cfg.scaling.num_workers > 0 else {}
    result = fit(make_task(train_cfg, shards, f"stages.{ctx.stage}"), train_cfg, out_dir)

    record = {"kind": "train-diffusion", "config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg),
              "input": {"dataset": cfg.input, "shards": len(shards)}, "encoder": train_cfg.encoder.model_dump(),
              "judge": train_cfg.eval.judge.model_dump() if train_cfg.eval.judge else None, "cluster": cluster,
              **result}
    write_json_atomic(join(out_dir, "train.json"), record)
    ev = result["eval"]
    ctx.dataset(ctx.output).update_manifest(ctx.stage, {
        "kind": "train-diffusion", "state": "complete" if result["step"] >= cfg.steps else "partial",
        "steps": {"done": result["step"], "total": cfg.steps}, "samples": result["samples_seen"],
        "wall_seconds": round(result["seconds"], 2), "config_hash": record["config_hash"],
        "fd": (ev.get("frechet") or {}).get("fd")})
    rows: list[tuple[str, Any]] = [
        ("model", f"{cfg.model.kind} {cfg.model.layers} layers x {cfg.model.width} ({cfg.diffusion.family}, "
                  f"{train_cfg.diffusion.prediction_name()})"),
        ("conditioning", train_cfg.encoder.describe()),
        ("steps", f"{result['step']}/{cfg.steps} ({result['samples_seen']} samples)"),
        ("wall time", fmt_seconds(result["seconds"])),
        ("final loss", f"{result['metrics'].get('loss', float('nan')):.4f}"),
        *summary_rows(ev),
        ("sample grid", result.get("grid")),
        ("weights", result["weights"]),
    ]
    print_summary(f"stage {ctx.stage}", rows)
    return {"output": out_dir, **{k: v for k, v in record.items() if k != "config"}}


def summary_rows(ev: dict) -> list[tuple[str, str]]:
    """The evaluation's lines, each number with its reference (chance, real images, the sample-size floor)."""
    rows = []
    fd, attrs, align = ev.get("frechet"), ev.get("attributes"), ev.get("alignment")
    if fd:
        rows.append(("Frechet distance", f"{fd['fd']:.4f} ({fd['samples']} images; two real halves: "
                                         f"{fd['fd_real_halves']:.4f})"))
    if attrs:
        for key in ("colour", "shape"):
            real = f", the judge on real images {attrs[f'real_{key}']:.1%}" if f"real_{key}" in attrs else ""
            rows.append((f"{key} accuracy", f"{attrs[key]:.1%} (chance {attrs[f'{key}_chance']:.1%}{real}; "
                                            f"{attrs['images']} images)"))
    if align:
        rows.append(("alignment", f"{align['score']:.2f} (real pairs {align['real_score']:.2f})"))
    return rows


def evaluate(ctx: StageContext, cfg: TrainDiffusionConfig, out: str | None = None) -> dict[str, Any]:
    """`winnow eval CONFIG`: sample the trained generator (EMA weights) and score it; writes `<model dir>/eval.json`
    unless `out` names another file."""
    import torch

    from training.generative.diffusion.generate import load_generator
    from training.generative.evaluation import evaluate_generator

    model_dir = ctx.path(ctx.output)
    if not exists(join(model_dir, WEIGHTS)):
        raise ConfigError(f"stages.{ctx.stage}: no trained generator at {join(model_dir, WEIGHTS)}; run the stage "
                          "first")
    train_cfg = resolve(ctx, cfg)
    if not train_cfg.eval.enabled:
        raise ConfigError(f"stages.{ctx.stage}.eval: nothing to evaluate against (set eval.heldout and eval.judge_from"
                          ", or run with a synthetic web)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = load_generator(model_dir, train_cfg.encoder, device, f"stages.{ctx.stage}")
    sampler = train_cfg.eval.sampler or train_cfg.sample.sampler
    result = evaluate_generator(lambda p, s: gen.images(p, s, sampler), train_cfg.eval, train_cfg.data.resolution,
                                device)
    result = {"generator": model_dir, "sampler": sampler.model_dump(mode="json"), **result}
    write_json_atomic(out or join(model_dir, "eval.json"), result)
    return result


def eval_row(cfg: TrainDiffusionConfig, res: dict) -> dict[str, str]:
    """This stage's row in `winnow eval`'s table (a likelihood metric adds its column the same way)."""
    fd, attrs, align = res.get("frechet") or {}, res.get("attributes") or {}, res.get("alignment") or {}
    return {"model": f"{cfg.model.kind} ({cfg.diffusion.family})",
            "FD": f"{fd['fd']:.4f}" if fd else "-",
            "colour": f"{attrs['colour']:.1%} ({attrs['colour_chance']:.0%})" if attrs else "-",
            "shape": f"{attrs['shape']:.1%} ({attrs['shape_chance']:.0%})" if attrs else "-",
            "alignment": f"{align['score']:.2f}" if align else "-"}
