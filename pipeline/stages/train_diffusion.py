"""The train-diffusion stage: a text-to-image generator on a dataset's shards. `model.kind: mmdit` is a denoiser
(rectified flow, EDM, VP or VE) conditioned on the frozen text tower of a train-clip stage of the same pipeline;
`model.kind: nice | realnvp | glow` is a normalizing flow (maximum likelihood on dequantised 8-bit pixels, sampled
by its exact inverse) conditioned through its couplings and base distribution on the class named in each caption or
on hashed caption words (`model.conditioning`), with no text encoder; its own settings are the `flow:` section.

    winnow run configs/demo.yaml --stage generator
    winnow eval configs/demo.yaml --stage generator

Input: the complete shards of dataset `input` (or `data.input_shards`). Output, under `<root>/<output>/` (default:
the stage's name): `checkpoints/step_*` (with the EMA weights), `metrics.csv` (loss per flow-time bin included),
`tb/`, `curves.png`, `samples/step_*.png` (grids from the EMA weights, fixed prompts and seeds),
`generator.safetensors` + `generator.json` (the EMA weights; network, image space, objective and the encoder's
sha256) or, for a flow, `flow.safetensors` + `flow.json` + `samples.png`, `eval.json` and `train.json`. Rerunning
resumes from the newest checkpoint.

Evaluation (after training, and `winnow eval`) uses encoders other than the conditioning one: the judge
(`eval.judge_from`, default: the first other train-clip stage) classifies samples of "a {colour} {shape}" zero-shot
and scores image-text alignment; the Frechet distance uses `eval.features_from` (default: the judge). With a
synthetic web in the pipeline its held-out test set is the real reference and the class list. Every family also
reports held-out bits/dim of the same 8-bit images (`eval.likelihood`): exact for flows, through the probability-flow
ODE for pixel-space denoisers.
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
from pipeline.stages.finished import finished_record, skip_finished
from training.generative.config import EncoderRef, GenerativeEvalConfig
from training.generative.diffusion.config import DiffusionTrainConfig


class TrainDiffusionConfig(StageConfig, DiffusionTrainConfig):
    """`input`: the dataset whose shards train the generator; `output`: the model directory (default: stage name)."""

    encoder_from: str | None = Field(None, description="a train-clip stage of this pipeline whose frozen text tower "
                                                       "conditions the generator (or give `encoder`)")

    @model_validator(mode="after")
    def _one_encoder(self) -> TrainDiffusionConfig:
        if self.is_flow:
            if self.encoder_from is not None or self.encoder is not None:
                raise ValueError(f"model.kind {self.model.kind} is a normalizing flow: it is conditioned through "
                                 "model.conditioning (class or text), not a text encoder; drop `encoder_from` / "
                                 "`encoder`")
            return self
        if (self.encoder_from is None) == (self.encoder is None):
            raise ValueError("give `encoder_from` (a train-clip stage) or `encoder` ({name, weights}), exactly one")
        return self


CONFIG = TrainDiffusionConfig
PRODUCES = "generator"
WEIGHTS = "generator.safetensors"
FLOW_WEIGHTS = "flow.safetensors"


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
    from pipeline.core.model_files import check_open_clip_source
    from training.generative.diffusion.task import check_latent

    if cfg.encoder_from:
        _encoder_stage(ctx, cfg.encoder_from, "encoder_from")
    for key, ref in (("encoder", cfg.encoder), ("eval.judge", cfg.eval.judge), ("eval.features", cfg.eval.features)):
        if ref is not None:  # a user's own open_clip weights: a file, or a local-dir: folder of the right kind
            check_open_clip_source(ref.name, ref.weights, f"stages.{ctx.stage}.{key}")
    judge = _judge_name(ctx, cfg)
    if judge is not None:
        _encoder_stage(ctx, judge, "eval.judge_from")
        if judge == cfg.encoder_from:
            raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}.eval.judge_from: {judge!r} is the "
                              "conditioning encoder (encoder_from); judge samples with an encoder that did not "
                              "condition them")
    if cfg.eval.features_from:
        _encoder_stage(ctx, cfg.eval.features_from, "eval.features_from")
    if not cfg.is_flow:
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


def conditioning_encoder(ctx: StageContext, cfg: TrainDiffusionConfig) -> EncoderRef:
    """The frozen text tower that conditions the stage's generator: `encoder`, or the `encoder_from` stage's."""
    return cfg.encoder or _ref(ctx, cfg.encoder_from, "encoder_from")


def load_trained(ctx: StageContext, cfg: TrainDiffusionConfig, device: str, encoder: EncoderRef | None = None,
                 temperature: float | None = None):
    """The stage's exported generator, as `winnow eval` and `winnow sample` use it: the denoiser's EMA weights
    conditioned on the encoder it was trained with (`diffusion.generate.Generator`), or the flow
    (`flows.generate.FlowGenerator`, sampled at `temperature`, default the stage's `flow.temperature`)."""
    model_dir = ctx.path(ctx.output)
    weights = join(model_dir, FLOW_WEIGHTS if cfg.is_flow else WEIGHTS)
    if not exists(weights):
        raise ConfigError(f"stages.{ctx.stage}: no trained generator at {weights}; run the stage first")
    if cfg.is_flow:
        from training.generative.flows.generate import load_flow_generator

        return load_flow_generator(model_dir, cfg.flow.temperature if temperature is None else temperature, device)
    from training.generative.diffusion.generate import load_generator

    return load_generator(model_dir, encoder or conditioning_encoder(ctx, cfg), device, f"stages.{ctx.stage}")


def resolve(ctx: StageContext, cfg: TrainDiffusionConfig) -> DiffusionTrainConfig:
    """The task's config: the stage keys dropped, the encoders resolved to weights files."""
    train_cfg = DiffusionTrainConfig.model_validate(
        cfg.model_dump(exclude={"kind", "input", "output", "encoder_from"}))
    ev = default_eval(ctx, cfg)
    if cfg.is_flow:
        return train_cfg.model_copy(update={"eval": ev})
    encoder = conditioning_encoder(ctx, cfg)
    if ev.judge is not None and ev.judge.files == encoder.files:
        raise ConfigError(f"stages.{ctx.stage}.eval.judge: {ev.judge.files} is the conditioning encoder's "
                          "checkpoint; judge samples with an encoder that did not condition them")
    return train_cfg.model_copy(update={"encoder": encoder, "eval": ev})


def make_task(cfg: DiffusionTrainConfig, shards: list[str], where: str):
    """The engine task that trains `model.kind`: the MMDiT denoiser, or a normalizing flow (NICE, RealNVP, Glow)
    whose held-out set and class names come from the resolved `eval` section."""
    if cfg.model.kind == "mmdit":
        from training.generative.diffusion.task import DiffusionTask

        return DiffusionTask(cfg, shards, where=where)
    if cfg.is_flow:
        from training.data import expand_shards
        from training.generative.flows.task import FlowTask, flow_task_config

        ev, classnames = cfg.eval, None
        if ev.classnames:
            from training.contrastive.eval import read_classnames

            classnames = read_classnames(ev.classnames)[0]
        if cfg.model.conditioning == "class" and not (classnames or cfg.model.classes):
            raise ConfigError(f"{where}.model.conditioning: class conditioning needs the class names: set "
                              f"{where}.eval.classnames (a classnames.json) or run with a synthetic web")
        heldout = expand_shards(ev.heldout) if ev.heldout and ev.likelihood.samples else []
        return FlowTask(flow_task_config(cfg), shards, heldout, classnames)
    raise ConfigError(f"{where}.model.kind: no task trains {cfg.model.kind!r}")


def describe_model(cfg: DiffusionTrainConfig) -> str:
    m = cfg.model
    if cfg.is_flow:
        return (f"{m.kind} flow, {m.levels} levels x {m.steps_per_level} steps, hidden {m.hidden}, conditioning "
                f"{m.conditioning}, {cfg.flow.preprocess} preprocessing")
    return f"{m.kind} {m.layers} layers x {m.width} ({cfg.diffusion.family}, {cfg.diffusion.prediction_name()})"


def run(ctx: StageContext, cfg: TrainDiffusionConfig) -> dict[str, Any]:
    from pipeline.core.tables import fmt_seconds, print_summary
    from pipeline.stages.train_clip import input_shards
    from training.engine import fit

    out_dir = ctx.path(ctx.output)
    shards = input_shards(ctx, cfg)
    train_cfg = resolve(ctx, cfg)
    encoder = train_cfg.encoder.model_dump() if train_cfg.encoder else None
    judge = train_cfg.eval.judge.model_dump() if train_cfg.eval.judge else None
    done = finished_record(out_dir, cfg, cfg.steps, encoder=encoder, judge=judge)
    if done:  # nothing to train, evaluate or export: no Ray Train started (pipeline.stages.finished)
        return skip_finished(ctx.stage, out_dir, done, cfg.steps,
                             [*summary_rows(done["eval"]), ("sample grid", done.get("grid"))])
    cluster = ctx.init_ray() if train_cfg.scaling.num_workers > 0 else {}
    result = fit(make_task(train_cfg, shards, f"stages.{ctx.stage}"), train_cfg, out_dir)
    if train_cfg.is_flow:  # the flow task scores bits/dim; its samples are judged here, on the exported weights
        result["grid"] = result.pop("samples", None)
        if train_cfg.eval.enabled:
            result["eval"] = evaluate(ctx, cfg, train_cfg=train_cfg)

    record = {"kind": "train-diffusion", "config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg),
              "input": {"dataset": cfg.input, "shards": len(shards)}, "encoder": encoder, "judge": judge,
              "cluster": cluster,
              **result}
    write_json_atomic(join(out_dir, "train.json"), record)
    ev = result["eval"]
    ctx.dataset(ctx.output).update_manifest(ctx.stage, {
        "kind": "train-diffusion", "state": "complete" if result["step"] >= cfg.steps else "partial",
        "steps": {"done": result["step"], "total": cfg.steps}, "samples": result["samples_seen"],
        "wall_seconds": round(result["seconds"], 2), "config_hash": record["config_hash"],
        "fd": (ev.get("frechet") or {}).get("fd"), "bits_per_dim": (ev.get("likelihood") or {}).get("bits_per_dim")})
    rows: list[tuple[str, Any]] = [
        ("model", describe_model(train_cfg)),
        ("conditioning", train_cfg.encoder.describe() if train_cfg.encoder else f"{cfg.model.conditioning} "
                                                                                "(through the flow)"),
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
    fd, attrs, align, lk = ev.get("frechet"), ev.get("attributes"), ev.get("alignment"), ev.get("likelihood")
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
    if lk:
        rows.append(("held-out bits/dim", f"{lk['bits_per_dim']:.3f} +- {lk['bits_per_dim_sem']:.3f} "
                                          f"({lk['samples']} images; a uniform model: 8; {lk.get('method', '')})"))
    return rows


def evaluate(ctx: StageContext, cfg: TrainDiffusionConfig, out: str | None = None,
             train_cfg: DiffusionTrainConfig | None = None) -> dict[str, Any]:
    """`winnow eval CONFIG`: sample the trained generator (EMA weights) and score it, held-out bits/dim included;
    writes `<model dir>/eval.json` unless `out` names another file."""
    import torch

    from training.generative.evaluation import evaluate_generator

    model_dir = ctx.path(ctx.output)
    train_cfg = train_cfg or resolve(ctx, cfg)
    ev = train_cfg.eval
    if not ev.anything:
        raise ConfigError(f"stages.{ctx.stage}.eval: nothing to evaluate against (set eval.heldout and eval.judge_from"
                          ", or run with a synthetic web)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = load_trained(ctx, cfg, device, train_cfg.encoder)
    if cfg.is_flow:
        result = evaluate_generator(gen.images, ev, train_cfg.data.resolution, device, density=gen)
        result = {"generator": model_dir, "temperature": train_cfg.flow.temperature, **result}
    else:
        sampler = ev.sampler or train_cfg.sample.sampler
        result = evaluate_generator(lambda p, s: gen.images(p, s, sampler), ev, train_cfg.data.resolution, device,
                                    density=gen.density(ev.likelihood))
        result = {"generator": model_dir, "sampler": sampler.model_dump(mode="json"), **result}
    write_json_atomic(out or join(model_dir, "eval.json"), result)
    return result


def eval_row(cfg: TrainDiffusionConfig, res: dict) -> dict[str, str]:
    """This stage's row in `winnow eval`'s table."""
    fd, attrs, align = res.get("frechet") or {}, res.get("attributes") or {}, res.get("alignment") or {}
    lk = res.get("likelihood") or {}
    return {"model": cfg.model.kind if cfg.is_flow else f"{cfg.model.kind} ({cfg.diffusion.family})",
            "FD": f"{fd['fd']:.4f}" if fd else "-",
            "colour": f"{attrs['colour']:.1%} ({attrs['colour_chance']:.0%})" if attrs else "-",
            "shape": f"{attrs['shape']:.1%} ({attrs['shape_chance']:.0%})" if attrs else "-",
            "alignment": f"{align['score']:.2f}" if align else "-",
            "bits/dim": f"{lk['bits_per_dim']:.3f}" if lk else "-"}
