"""The score stage: per-sample signals and `dfn_score` for every downloaded sample, once.

    winnow run configs/demo.yaml --stage score

One input shard -> `signals/<shard>.parquet` (one row per sample, keyed by uid, sorted by key) and, with a model,
`embeddings/<shard>.npy` (float16 image embeddings, row-aligned), then a `signals/_done/<shard>` marker. The
actor-pool runner (`pipeline.execution.actor_pool`) covers the shards not yet done:

    shard paths -> read tar + signals + resize/crop (`read_shard`) -> DFNScorer (actor pool)
                -> driver writes shards (`write_scored_shard`)

A shard is also redone when its input tar or the model changed since it was scored.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from filtering.dfn import ModelSpec
from pipeline.core.config import ConfigError, config_hash
from pipeline.core.images import DEFAULT_MAX_PIXELS
from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path
from pipeline.core.storage import exists
from pipeline.execution.actor_pool import ActorPoolConfig
from pipeline.stages import stage_module
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


class ScoreConfig(StageConfig, ActorPoolConfig):
    model: ModelSpec | None = Field(None, description="filtering network for dfn_score; null = signals only")
    model_from: str | None = Field(
        None, description="a train-clip stage of this pipeline whose final weights (model.pt) score, instead of model")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="bigger images are a decode error")
    keep_embeddings: bool = Field(True, description="write embeddings/<shard>.npy (needed for semantic dedup)")
    phash_decode: Literal["full", "reduced"] = Field(
        "full", description="what the perceptual hash is computed from: the full-resolution decode (exact), or the "
                            "reduced decode the model's crop comes from (one smaller decode per image; on 512-1024 px "
                            "JPEGs 14% of hashes differ from the full decode's, by a few bits)")

    @model_validator(mode="after")
    def _input(self) -> ScoreConfig:
        if not self.input:
            raise ValueError("score needs `input:` (the dataset whose shards to score)")
        if self.model is not None and self.model_from is not None:
            raise ValueError("give `model` or `model_from`, not both")
        return self

    @property
    def has_model(self) -> bool:
        return self.model is not None or self.model_from is not None


def _source_stage(ctx: StageContext, cfg: ScoreConfig):
    known = ctx.pipeline.stages_producing("encoder")
    if cfg.model_from not in known:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}.model_from: {cfg.model_from!r} is not "
                          f"a stage of this pipeline that trains an encoder (those: {', '.join(known) or 'none'})")
    return ctx.pipeline.stages[cfg.model_from]


def preflight(ctx: StageContext, cfg: ScoreConfig) -> None:
    if cfg.model_from:
        _source_stage(ctx, cfg)
    if cfg.model is not None:  # a user's own weights: a file, a tag, or a local-dir: folder of the right kind
        cfg.model.check(f"stages.{ctx.stage}.model")


def resolve_model(ctx: StageContext, cfg: ScoreConfig) -> ScoreConfig:
    """`model_from: train_filter` -> the model that stage trained: its model name and its final `model.pt`."""
    if not cfg.model_from:
        return cfg
    stage = _source_stage(ctx, cfg)
    weights = ctx.path(ctx.pipeline.output_of(cfg.model_from), stage_module(stage.kind).WEIGHTS)
    if not exists(weights):
        raise ConfigError(f"stages.{ctx.stage}.model_from: {weights} does not exist; run stage {cfg.model_from!r} "
                          "first")
    return cfg.model_copy(update={"model": ModelSpec(name=stage.model.name, pretrained=weights), "model_from": None})


CONFIG = ScoreConfig


def model_key(cfg: ScoreConfig) -> str | None:
    """What makes one run's signals differ from another's: the model (None without one)."""
    return config_hash(cfg.model) if cfg.model else None


def model_weights_id(spec: ModelSpec | None) -> str | None:
    """The scoring weights' content id (`sha256:...` of the checkpoint, or `tag:name/tag`; None without a model):
    a filter retrained in place has a new id, so its shards are scored again, and a caption judge knows whether
    these embeddings are its own (`pipeline.stages.caption`)."""
    from filtering.capfilt import weights_id
    from pipeline.core.model_files import local_dir

    if spec is None:
        return None
    files = spec.pretrained or local_dir(spec.name)
    return weights_id(files, spec.name) if files else f"random:{spec.name}"


def read_shard(item: dict, chunk_rows: int, max_pixels: int, preprocess_cfg: dict | None, phash_decode: str = "full"):
    """Read function of the actor-pool runner: one shard's signal chunks (with crops for the model), then its end."""
    from filtering.preprocess import Preprocessor
    from filtering.signals import BASE_SCHEMA, rows_to_columns, signal_batches
    from pipeline.core.shards import ReadReport, read_samples
    from pipeline.core.timing import TimeSplit
    from pipeline.execution.actor_pool import ShardEnd

    pre = Preprocessor(preprocess_cfg) if preprocess_cfg else None
    report, split = ReadReport(), TimeSplit()
    yield from signal_batches(read_samples(str(item["url"]), report), str(item["shard"]), chunk_rows, max_pixels, pre,
                              phash_decode, split)
    blank = rows_to_columns([dict.fromkeys(BASE_SCHEMA.names)], [None] if pre else None, pre.shape if pre else None)
    yield ShardEnd({**report.as_dict(), "time_split": split.as_dict()}, blank)  # not decodable: the scorer skips it


def write_scored_shard(ds: Dataset, shard: str, cols: dict, info: dict, cfg: ScoreConfig,
                       input_sha: str | None, model_id: str | None = None) -> dict:
    """Write one shard's signals (+ embeddings); return its record (the runner writes it as the marker)."""
    import pyarrow.parquet as pq

    from filtering.signals import signals_schema, to_table

    with_model = cfg.model is not None
    keep_emb = with_model and cfg.keep_embeddings
    if len(cols["uid"]) == 0:  # an empty shard (or one whose tar was unreadable from the first byte) still gets files
        table = signals_schema(with_model).empty_table()
    else:
        order = np.argsort(np.asarray(cols["key"]).astype(str), kind="stable")  # deterministic row order
        cols = {k: np.asarray(v)[order] for k, v in cols.items()}
        table = to_table(cols, with_model)
    files = {}
    sig_url = ds.shard_file(shard, "parquet", "signals")
    with atomic_write(sig_url, "wb") as f:
        pq.write_table(table, f)
    files[f"signals/{shard}.parquet"] = file_record(*fs_and_path(sig_url))
    if keep_emb:
        emb_url = ds.shard_file(shard, "npy", "embeddings")
        with atomic_write(emb_url, "wb") as f:
            np.save(f, np.asarray(cols["image_embedding"], dtype=np.float16))
        files[f"embeddings/{shard}.npy"] = file_record(*fs_and_path(emb_url))
    decodable = np.asarray(table.column("decodable").to_pylist(), dtype=bool)
    reasons: Counter = Counter()
    for err in table.column("decode_error").to_pylist():
        if err:
            reasons[f"undecodable:{err.split(':', 1)[0]}"] += 1
    for why, n in (info.get("skipped") or {}).items():
        reasons[f"member:{why}"] += n
    if info.get("error"):
        reasons["tar_error"] += 1
    return {"samples": table.num_rows, "ok": int(decodable.sum()), "reasons": dict(reasons), "files": files,
            "model": model_key(cfg), "model_id": model_id, "phash_decode": cfg.phash_decode,
            "input_sha256": input_sha, "read": info}


def _input_sha(marker: dict, shard: str) -> str | None:
    return (marker.get("files") or {}).get(f"shards/{shard}.tar", {}).get("sha256")


def pipeline_steps(cfg: ScoreConfig, resources: dict, preprocess_cfg: dict | None):
    """The runner's read step (signals + crops) and, with a model, its model step (the scorer actors)."""
    from filtering.dfn import DFNScorer
    from pipeline.execution.actor_pool import ModelStep, ReadStep

    read = ReadStep(read_shard, {"chunk_rows": cfg.chunk_rows, "max_pixels": cfg.max_image_pixels,
                                 "preprocess_cfg": preprocess_cfg, "phash_decode": cfg.phash_decode},
                    num_cpus=resources["read_cpus"], memory_mb=cfg.read_memory_mb)
    model = None
    if cfg.model is not None:
        model = ModelStep(DFNScorer, {"spec": cfg.model.model_dump(), "device": resources["device"],
                                      "num_threads": resources["threads"]},
                          actors=resources["actors"], num_cpus=resources["actor_cpus"],
                          num_gpus=resources["actor_gpus"], batch_size=cfg.batch_size)
    row_bytes = 2048 + (int(np.prod(preprocess_cfg["size"])) * 3 if preprocess_cfg else 0)  # a chunk per block
    return read, model, max(1 << 20, cfg.chunk_rows * row_bytes)


def run(ctx: StageContext, cfg: ScoreConfig) -> dict[str, Any]:
    from filtering.signals import signals_schema
    from pipeline.execution.actor_pool import plan_resources, run_actor_pool
    from pipeline.execution.record import StageRecord

    cfg = resolve_model(ctx, cfg)
    ds = ctx.dataset(cfg.input)
    inputs = ds.done_shards("shards")
    key, model_id = model_key(cfg), model_weights_id(cfg.model)
    # startup_seconds stays None (in the manifest) when every shard is already done and no model starts
    record = StageRecord(ctx.stage, ds, sorted(inputs), folder="signals", timings={"startup_seconds": None})
    todo = record.pending(current=lambda s, mark: mark.get("model") == key and mark.get("model_id") == model_id
                          and mark.get("phash_decode", "full") == cfg.phash_decode
                          and mark.get("input_sha256") == _input_sha(inputs[s], s))
    ds.intact_shards(todo)  # a download shard damaged on disk is reported here, not half-scored
    if not inputs:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: dataset {ds.url} has no complete "
                          "shards to score (run the download stage first)")
    preprocess_cfg = cfg.model.preprocess_cfg() if cfg.model else None  # fails early on a bad model name
    resources = {}
    if todo:
        resources = plan_resources(cfg, ctx.init_ray(), cfg.model is not None, ctx.stage)
        read, model, block_bytes = pipeline_steps(cfg, resources, preprocess_cfg)
        run_actor_pool(record, [{"shard": s, "url": ds.shard_source(s, "tar", inputs[s])} for s in todo],
                       lambda s, cols, info: write_scored_shard(ds, s, cols, info, cfg, _input_sha(inputs[s], s),
                                                                model_id),
                       read, model, block_bytes=block_bytes, retries=cfg.retries,
                       stall_s=cfg.stall_timeout)
    summary = record.finish({
        "kind": "score",
        "model": cfg.model.model_dump() if cfg.model else None,
        "model_key": key, "model_id": model_id,
        "signals": signals_schema(cfg.model is not None).names,
        "embeddings": bool(cfg.model is not None and cfg.keep_embeddings),
        "resources": resources,
        "config_hash": config_hash(cfg),
    })
    return {"dataset": ds.url, **summary.as_dict()}


def signal_names(ds: Dataset) -> set[str] | None:
    """Signals present in a dataset's scored shards (+ 'embedding' when embeddings were kept), None if unscored."""
    import pyarrow.parquet as pq

    done = ds.done_shards("signals")
    if not done:
        return None
    shard, rec = next(iter(sorted(done.items())))
    fs, path = fs_and_path(ds.shard_file(shard, "parquet", "signals"))
    with fs.open(path, "rb") as f:
        names = set(pq.read_schema(f).names)
    if any(k.startswith("embeddings/") for k in rec.get("files", {})):
        names.add("embedding")
    return names


def planned_signals(cfg: ScoreConfig) -> set[str]:
    """Signals a score stage with this config will compute (for checking recipes before any work)."""
    from filtering.signals import signals_schema

    names = set(signals_schema(cfg.has_model).names)
    return names | ({"embedding"} if cfg.has_model and cfg.keep_embeddings else set())

