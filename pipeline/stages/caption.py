"""The caption stage: BLIP's CapFilt captioner and filter over a pool, once per image.

    winnow run configs/capfilt_bootstrap.yaml --stage caption

One input shard -> `captions/<shard>.parquet` in the input dataset (one row per sample, keyed by uid, sorted by key),
then a `captions/_done/<shard>` marker. A row holds the web caption, the synthetic captions (`decoding.num_captions`
per image), the judge's score of each and its match probability, the decoding settings and the captioner's and
judge's checkpoint hashes. The actor-pool runner (`pipeline.execution.actor_pool`) covers the shards not yet done:

    shard paths -> read tar + resize/crop (`caption_read.read_shard`) -> CaptionAndJudge (actor pool: caption, judge)
                -> driver writes shards (`write_caption_shard`)

An image that does not decode gets no caption and reason `undecodable`; a sample held out by the captioner's or the
judge's training stage (`holdout:`) is an evaluation pair and is never captioned (reason `held_out`). A shard is
redone when its input tar, the captioner, the decoding or the judge changed. Weights come from a path or from a
train-clip stage of the pipeline (`captioner_from`: it must train a CoCa; `caption_filter_from`); missing or
incompatible weights, or a judge that is the captioner, fail before any work.

When the input was scored with the judge's own weights and config (`score: {model_from: train_filter}` and
`caption_filter_from: train_filter`), the judge reads the score stage's stored image embeddings instead of encoding
the images again (`reuse_score_embeddings`; float16, so its cosines move by up to ~1e-3); the summary counts them.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from filtering.capfilt import CaptionFilterSpec
from filtering.captioner import CaptionerConfig, CaptionerSpec
from pipeline.core.config import ConfigError, config_hash
from pipeline.core.images import DEFAULT_MAX_PIXELS
from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path, join
from pipeline.core.storage import exists
from pipeline.execution.actor_pool import ActorPoolConfig
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)
FOLDER = "captions"


class CaptionConfig(StageConfig, ActorPoolConfig):
    WRITES_INTO_INPUT: ClassVar[bool] = True  # captions/ beside the input's shards, as score writes signals/
    captioner: CaptionerSpec | None = Field(None, description="the captioning model and its weights")
    captioner_from: str | None = Field(None, description="a train-clip stage of this pipeline that trains a CoCa: "
                                                         "its final model.pt captions, instead of captioner")
    decoding: CaptionerConfig = Field(CaptionerConfig(), description="how captions are decoded (BLIP: nucleus, "
                                                                     "top_p 0.9)")
    caption_filter: CaptionFilterSpec | None = Field(None, description="the model that judges each caption; never "
                                                                       "the captioner")
    caption_filter_from: str | None = Field(None, description="a train-clip stage of this pipeline whose model.pt "
                                                              "judges, instead of caption_filter")
    calibration: str | None = Field(None, description="a holdout.json whose Platt fit turns the judge's cosine into "
                                                      "P(match); default: the caption_filter_from stage's")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="bigger images are a decode error")
    reuse_score_embeddings: bool = Field(
        True, description="when the input's score stage scored with the judge's own weights and preprocessing, the "
                          "judge reads its stored image embeddings (float16) instead of encoding every image again")

    @model_validator(mode="after")
    def _sources(self) -> CaptionConfig:
        if not self.input:
            raise ValueError("caption needs `input:` (the dataset whose images to caption)")
        if (self.captioner is None) == (self.captioner_from is None):
            raise ValueError("give exactly one of `captioner` and `captioner_from`")
        if (self.caption_filter is None) == (self.caption_filter_from is None):
            raise ValueError("give exactly one of `caption_filter` and `caption_filter_from`")
        if self.output not in (None, self.input):
            raise ValueError("caption writes captions/ into its input dataset (as score writes signals/); drop "
                             "`output`")
        return self


CONFIG = CaptionConfig


def _train_stage(ctx: StageContext, key: str, name: str, coca: bool):
    where = f"{ctx.config_path or 'config'}: stages.{ctx.stage}.{key}"
    known = ctx.pipeline.stages_producing("encoder")
    if name not in known:
        raise ConfigError(f"{where}: {name!r} is not a stage of this pipeline that trains a model (those: "
                          f"{', '.join(known) or 'none'})")
    stage = ctx.pipeline.stages[name]
    if coca and getattr(stage, "objective", None) != "coca":
        raise ConfigError(f"{where}: stage {name!r} trains objective {getattr(stage, 'objective', '?')!r}; a "
                          "captioner must be a CoCa (objective: coca)")
    if not coca and getattr(stage, "objective", None) == "catlip":
        raise ConfigError(f"{where}: stage {name!r} trains CatLIP, which has no text tower to judge captions with")
    return stage


def _weights(ctx: StageContext, name: str) -> str:
    from pipeline.stages import stage_module

    return ctx.path(ctx.pipeline.output_of(name), stage_module(ctx.pipeline.stages[name].kind).WEIGHTS)


def preflight(ctx: StageContext, cfg: CaptionConfig) -> None:
    """Before any stage runs: the weights (or the stages that will train them), the captioner's config and the
    decoding settings, a judge that is not the captioner, and an input that is not an evaluation set."""
    from filtering.capfilt import SAME_MODEL, check_loads
    from filtering.captioner import check_captioner

    if cfg.captioner_from and cfg.captioner_from == cfg.caption_filter_from:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: {SAME_MODEL}; captioner_from and "
                          f"caption_filter_from both name stage {cfg.captioner_from!r}")
    if cfg.caption_filter_from:
        _train_stage(ctx, "caption_filter_from", cfg.caption_filter_from, coca=False)
    _refuse_evaluation_input(ctx, cfg)
    if cfg.captioner_from:
        stage = _train_stage(ctx, "captioner_from", cfg.captioner_from, coca=True)
        weights = _weights(ctx, cfg.captioner_from)
        if not exists(weights):  # to be trained by that stage: its model config file stands in for the weights
            weights = _model_config_file(stage.model.name) or weights
        check_captioner(CaptionerSpec(name=stage.model.name, weights=weights), cfg.decoding)
    else:
        check_captioner(cfg.captioner, cfg.decoding, f"stages.{ctx.stage}.captioner")
    if cfg.caption_filter:
        cfg.caption_filter.check(f"stages.{ctx.stage}.caption_filter")  # a folder of the wrong kind, before hashing
    if cfg.captioner and cfg.caption_filter:
        _distinct(cfg.captioner, cfg.caption_filter)
    # weights given as paths: built once now, not hours in
    check_loads(cfg.captioner, cfg.caption_filter, f"stages.{ctx.stage}.caption_filter")


def _model_config_file(name: str) -> str | None:
    """The JSON file of an open_clip model config (winnow's configs/models, else open_clip's own)."""
    import importlib.util
    from pathlib import Path

    from pipeline.core.paths import MODEL_CONFIGS_DIR

    dirs = [MODEL_CONFIGS_DIR]
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "model_configs")
    return next((str(d / f"{name}.json") for d in dirs if (d / f"{name}.json").is_file()), None)


def _refuse_evaluation_input(ctx: StageContext, cfg: CaptionConfig) -> None:
    """Evaluation sets are never captioned: refuse an input that holds a train-clip stage's evaluation shards or
    the synthetic web's test set."""
    import os

    from pipeline.core.layout import fs_and_path

    mine = fs_and_path(ctx.path(cfg.input))[1].rstrip("/") + "/"
    sets = [join(ctx.pipeline.synthetic_dir(), "test")] if ctx.pipeline.synthetic is not None else []
    for st in ctx.pipeline.stages.values():
        ev = getattr(st, "eval", None)
        for src in (getattr(ev, "zeroshot", None), getattr(ev, "retrieval", None)):
            sets += [p for p in (getattr(src, "shards", None), getattr(src, "image_folder", None)) if p]
    for pattern in sets:
        path = fs_and_path(pattern)[1]
        if (os.path.dirname(path) if any(c in path for c in "*?[{") or path.endswith(".tar") else path) \
                .rstrip("/") + "/" == mine or path.startswith(mine):
            raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}.input: {cfg.input!r} holds an "
                              f"evaluation set ({pattern}); evaluation sets are never captioned")


def _distinct(captioner: CaptionerSpec, judge: CaptionFilterSpec) -> tuple[str, str]:
    """(captioner id, judge id): checkpoint hashes; raises when they are the same weights."""
    from filtering.capfilt import check_distinct, weights_id

    ids = weights_id(captioner.weights, captioner.name), weights_id(judge.files, judge.name)
    check_distinct(*ids, captioner.weights, judge.files)
    return ids


def resolve(ctx: StageContext, cfg: CaptionConfig, build: bool = True) -> dict:
    """The models as they are now on disk: captioner and judge specs and ids, the calibration, and the held-out
    splits of the stages that trained them on this input (those samples are evaluation pairs). `build` loads the
    trained models once on the CPU, so that incompatible weights fail before any work is planned."""
    from filtering.capfilt import check_loads, read_calibration
    from filtering.captioner import check_captioner
    from filtering.holdout import HoldoutSplit

    captioner, judge, splits = cfg.captioner, cfg.caption_filter, []
    for key, name in (("captioner_from", cfg.captioner_from), ("caption_filter_from", cfg.caption_filter_from)):
        if not name:
            continue
        stage, weights = ctx.pipeline.stages[name], _weights(ctx, name)
        if not exists(weights):
            raise ConfigError(f"stages.{ctx.stage}.{key}: {weights} does not exist; run stage {name!r} first")
        if key == "captioner_from":
            captioner = CaptionerSpec(name=stage.model.name, weights=weights)
        else:
            judge = CaptionFilterSpec(name=stage.model.name, weights=weights)
        if stage.holdout is not None and stage.input == cfg.input:
            splits.append(HoldoutSplit(stage.holdout.fraction, stage.holdout.seed))
    check_captioner(captioner, cfg.decoding)  # missing or incompatible weights fail here, before any work
    ids = _distinct(captioner, judge)
    if build:
        check_loads(captioner if cfg.captioner_from else None, judge if cfg.caption_filter_from else None)
    calibration = cfg.calibration
    if calibration is None and cfg.caption_filter_from:
        found = join(ctx.path(ctx.pipeline.output_of(cfg.caption_filter_from)), "holdout.json")
        calibration = found if exists(found) else None
    cal = read_calibration(calibration) if calibration and judge.backend == "clip" else None
    return {"captioner": captioner, "judge": judge, "captioner_id": ids[0], "judge_id": ids[1],
            "calibration": cal, "splits": splits}


def planned_signals(cfg: CaptionConfig, ctx: StageContext) -> set[str]:
    """What a caption stage with this config adds to its input's pool (for checking recipes before any work)."""
    from filtering.capfilt import CALIBRATED, CAPTION_SIGNALS

    judge = ctx.pipeline.stages.get(cfg.caption_filter_from) if cfg.caption_filter_from else None
    calibrated = bool(cfg.calibration) or (cfg.caption_filter is not None and cfg.caption_filter.backend == "blip") \
        or getattr(judge, "holdout", None) is not None
    return set(CAPTION_SIGNALS) | ({CALIBRATED} if calibrated else set())


def caption_signals(ds: Dataset) -> set[str]:
    """What the captions on disk add to a dataset's pool (empty when it has none)."""
    from filtering.capfilt import CALIBRATED, CAPTION_SIGNALS

    done = ds.done_shards(FOLDER)
    if not done:
        return set()
    return set(CAPTION_SIGNALS) | ({CALIBRATED} if all(r.get("calibrated") for r in done.values()) else set())


def write_caption_shard(ds: Dataset, shard: str, cols: dict, info: dict, ident: dict) -> dict:
    """Write one shard's captions; return its record (the runner writes it as the marker)."""
    import pyarrow.parquet as pq

    from filtering.capfilt import captions_table

    if len(cols["uid"]):
        order = np.argsort(np.asarray(cols["key"]).astype(str), kind="stable")  # deterministic row order
        cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    table = captions_table(cols, ident["captioner_id"], ident["judge_id"], ident["decoding"])
    url = ds.shard_file(shard, "parquet", FOLDER)
    with atomic_write(url, "wb") as f:
        pq.write_table(table, f)
    reasons = Counter(r for r in table.column("reason").to_pylist() if r)
    for why, n in (info.get("skipped") or {}).items():
        reasons[f"member:{why}"] += n
    if info.get("error"):
        reasons["tar_error"] += 1
    reused = int(np.asarray(cols.get("judge_embedding_reused", []), dtype=bool).sum())
    return {"samples": table.num_rows, "ok": table.num_rows - sum(v for k, v in reasons.items()
                                                                   if k in ("undecodable", "held_out")),
            "judge_embeddings_reused": reused,
            "reasons": dict(reasons), "files": {f"{FOLDER}/{shard}.parquet": file_record(*fs_and_path(url))},
            **{k: ident[k] for k in ("key", "calibrated")}, "input_sha256": ident["input_sha"].get(shard)}


def run(ctx: StageContext, cfg: CaptionConfig) -> dict[str, Any]:
    from filtering.capfilt import CaptionAndJudge, decoding_record
    from pipeline.execution.actor_pool import ModelStep, ReadStep, plan_resources, run_actor_pool
    from pipeline.execution.record import StageRecord
    from pipeline.stages.caption_read import read_shard, score_embeddings

    ds = ctx.dataset(cfg.input)
    inputs = ds.done_shards("shards")
    if not inputs:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: dataset {ds.url} has no complete "
                          "shards to caption (run the download stage first)")
    models = resolve(ctx, cfg)
    decoding = decoding_record(cfg.decoding.model_dump())
    ident = {"captioner_id": models["captioner_id"], "judge_id": models["judge_id"], "decoding": decoding,
             "calibrated": models["calibration"] is not None or models["judge"].backend == "blip",
             "input_sha": {s: (m.get("files") or {}).get(f"shards/{s}.tar", {}).get("sha256")
                           for s, m in inputs.items()}}
    reuse = score_embeddings(ds, models, ident["input_sha"]) if cfg.reuse_score_embeddings else {}
    ident["key"] = config_hash({k: ident[k] for k in ("captioner_id", "judge_id", "decoding")} |
                               {"calibration": models["calibration"], "splits": [repr(s) for s in models["splits"]]})
    record = StageRecord(ctx.stage, ds, sorted(inputs), folder=FOLDER, timings={"startup_seconds": None})
    todo = record.pending(current=lambda s, mark: mark.get("key") == ident["key"]
                          and mark.get("input_sha256") == ident["input_sha"].get(s))
    ds.intact_shards(todo)
    resources = {}
    if todo:
        resources = plan_resources(cfg, ctx.init_ray(), True, ctx.stage)
        cap_pre, judge_pre = models["captioner"].preprocess_cfg(), models["judge"].preprocess_cfg()
        read = ReadStep(read_shard, {"chunk_rows": cfg.chunk_rows, "max_pixels": cfg.max_image_pixels,
                                     "captioner_pre": cap_pre, "splits": models["splits"],
                                     "judge_pre": None if judge_pre == cap_pre else judge_pre,
                                     "embed_dim": reuse.get("dim")},
                        num_cpus=resources["read_cpus"], memory_mb=cfg.read_memory_mb)
        model = ModelStep(CaptionAndJudge, {"captioner": models["captioner"].model_dump(),
                                            "decoding": cfg.decoding.model_dump(),
                                            "judge": models["judge"].model_dump(),
                                            "calibration": models["calibration"], "device": resources["device"],
                                            "num_threads": resources["threads"]},
                          actors=resources["actors"], num_cpus=resources["actor_cpus"],
                          num_gpus=resources["actor_gpus"], batch_size=cfg.batch_size)
        row_bytes = 4096 + int(np.prod(cap_pre["size"])) * 6
        run_actor_pool(record, [{"shard": s, "url": ds.shard_source(s, "tar", inputs[s]),
                                 **reuse.get("shards", {}).get(s, {})} for s in todo],
                       lambda s, cols, info: write_caption_shard(ds, s, cols, info, ident), read, model,
                       block_bytes=max(1 << 20, cfg.chunk_rows * row_bytes), retries=cfg.retries,
                       stall_s=cfg.stall_timeout)
    done = ds.done_shards(FOLDER)
    reused = sum(int(done.get(s, {}).get("judge_embeddings_reused") or 0) for s in inputs)
    summary = record.finish({
        "judge_embeddings_reused": reused,
        "summary_rows": [("judge images", f"{reused} embeddings reused from the score stage (same weights), the "
                                          "rest encoded")] if reuse else [],
        "kind": "caption", "captioner": models["captioner"].model_dump(), "captioner_id": models["captioner_id"],
        "caption_filter": models["judge"].model_dump(), "caption_filter_id": models["judge_id"],
        "decoding": cfg.decoding.model_dump(), "calibration": models["calibration"],
        "held_out_splits": [repr(s) for s in models["splits"]], "resources": resources,
        "config_hash": config_hash(cfg)})
    return {"dataset": ds.url, **summary.as_dict()}


def read_captions(ds: Dataset):
    """Every captioned shard's rows (a pyarrow table in shard order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from filtering.capfilt import CAPTIONS_SCHEMA

    tables = []
    for shard in sorted(ds.done_shards(FOLDER)):
        fs, path = fs_and_path(ds.shard_file(shard, "parquet", FOLDER))
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else CAPTIONS_SCHEMA.empty_table()


def caption_quality(pipeline, ds: Dataset) -> dict | None:
    """What the captioner wrote on `ds` (`pipeline.synthetic.caption_truth.table_accuracy`): images captioned,
    distinct captions and, where the pipeline's web is synthetic and built, per attribute the share of captions
    naming what the image shows against chance. None when nothing is captioned."""
    from pipeline.synthetic.caption_truth import table_accuracy

    if not ds.done_shards(FOLDER):
        return None
    web = None
    if pipeline is not None and pipeline.synthetic is not None:
        try:
            web = pipeline.synthetic_dir()
        except ConfigError:  # a web that cannot live where the config says: no truth to check against
            web = None
    return table_accuracy(read_captions(ds), web)


def evaluate(ctx: StageContext, cfg: CaptionConfig, out: str | None = None) -> dict[str, Any]:
    """`winnow eval`: how well the captions on the input say what its images show (`caption_quality`); writes
    `<input dataset>/captions_eval.json` unless `out` names another file."""
    from pipeline.core.layout import write_json_atomic

    ds = ctx.dataset(cfg.input)
    result = caption_quality(ctx.pipeline, ds)
    if result is None:
        raise ConfigError(f"stages.{ctx.stage}: no captions on {ds.url}; run the stage first")
    write_json_atomic(out or ds.sub("captions_eval.json"), result)
    return result


def eval_row(cfg: CaptionConfig, res: dict) -> dict[str, str]:
    """This stage's row in `winnow eval`'s table: per attribute accuracy (chance), distinct captions."""
    row = {"captions": f"{res['distinct_captions']} distinct / {res['images_captioned']} images"}
    for name, a in (res.get("attributes") or {}).items():
        row[name] = "-" if a["accuracy"] is None else f"{a['accuracy']:.1%} (chance {a['chance']:.1%})"
    if res.get("right") is not None:
        row["all right"] = f"{res['right']:.1%}"
    return row
