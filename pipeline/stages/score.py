"""The score stage: per-sample signals and `dfn_score` for every downloaded sample, once.

    winnow run configs/demo.yaml --stage score

One input shard -> `signals/<shard>.parquet` (one row per sample, keyed by uid, sorted by key) and, with a model,
`embeddings/<shard>.npy` (float16 image embeddings, row-aligned), then a `signals/_done/<shard>` marker. One Ray
Data pipeline covers the shards not yet done:

    shard paths -> read tar + signals + resize/crop (CPU tasks) -> DFNScorer (actor pool) -> driver writes shards

Read tasks stream a shard in chunks and end it with a sentinel row carrying the shard's row count, so the driver
writes a shard as soon as all of its rows are in, whatever order Ray Data delivers them. Rows are deduplicated by
key on the driver, so a retried task cannot score a sample twice; a killed run leaves only complete shards
(written to temporary names, renamed, then marked), and a rerun redoes exactly the unmarked ones. A shard is also
redone when its input tar or the model changed since it was scored.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from filtering.dfn import ModelSpec
from pipeline.core.config import ConfigError, config_hash
from pipeline.core.images import DEFAULT_MAX_PIXELS
from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path
from pipeline.core.storage import exists
from pipeline.stages import stage_module
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


class ScoreConfig(StageConfig):
    model: ModelSpec | None = Field(None, description="filtering network for dfn_score; null = signals only")
    model_from: str | None = Field(
        None, description="a train-clip stage of this pipeline whose final weights (model.pt) score, instead of model")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs (auto: GPU if any)")
    actors: int = Field(1, ge=1, description="model actors (each loads the model once)")
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs per model actor (its torch threads)")
    actor_num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; default 1 on a GPU cluster")
    batch_size: int = Field(64, ge=1, description="images per model call")
    read_num_cpus: float = Field(1.0, gt=0, description="CPUs per read/decode task")
    read_memory_mb: int = Field(512, ge=1, description="memory reserved per read task (one chunk of a shard)")
    chunk_rows: int = Field(256, ge=1, description="rows per block from a read task")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="bigger images are a decode error")
    keep_embeddings: bool = Field(True, description="write embeddings/<shard>.npy (needed for semantic dedup)")

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


# --- read tasks ----------------------------------------------------------------------------------------------------
def read_shard(batch: dict[str, np.ndarray], chunk_rows: int, max_pixels: int, preprocess_cfg: dict | None):
    """Ray Data UDF: shard paths in, signal batches out (then one sentinel row per shard with its row count)."""
    from filtering.preprocess import Preprocessor
    from filtering.signals import rows_to_columns, signal_batches
    from pipeline.core.shards import ReadReport, read_samples

    pre = Preprocessor(preprocess_cfg) if preprocess_cfg else None
    for shard, url in zip(batch["shard"], batch["url"], strict=True):
        report = ReadReport()
        n = 0
        for cols in signal_batches(read_samples(str(url), report), str(shard), chunk_rows, max_pixels, pre):
            n += len(cols["uid"])
            yield _with_sentinel_columns(cols, end=False, rows=-1, info="")
        end = {"uid": None, "key": "", "shard": str(shard), "url": None, "caption": "", "image_ext": None,
               "image_bytes": 0, "width": None, "height": None, "aspect_ratio": None, "decodable": False,
               "decode_error": None, "caption_chars": 0, "caption_words": 0, "generic_caption": False,
               "generic_reason": None, "sha256": None, "phash": None}
        cols = rows_to_columns([end], [None] if pre else None, pre.shape if pre else None)
        yield _with_sentinel_columns(cols, end=True, rows=n, info=json.dumps(report.as_dict()))


def _with_sentinel_columns(cols: dict, end: bool, rows: int, info: str) -> dict:
    n = len(cols["uid"])
    cols["end_of_shard"] = np.full(n, end, dtype=bool)
    cols["shard_rows"] = np.full(n, rows, dtype=np.int64)
    cols["shard_info"] = np.array([info] * n, dtype=object)
    return cols


# --- the driver: collect rows per shard, write complete shards -------------------------------------------------------
class ShardCollector:
    """Rows arrive in any order, possibly twice (task retries); a shard is complete when all its keys are in."""

    def __init__(self):
        self.parts: dict[str, list[dict]] = defaultdict(list)
        self.keys: dict[str, set[str]] = defaultdict(set)
        self.expected: dict[str, int] = {}
        self.info: dict[str, dict] = {}

    def add(self, batch: dict[str, np.ndarray]) -> list[str]:
        shards = np.asarray(batch["shard"]).astype(str)
        end = np.asarray(batch["end_of_shard"], dtype=bool)
        touched = set()
        for i in np.flatnonzero(end):
            s = shards[i]
            self.expected[s] = int(batch["shard_rows"][i])
            self.info[s] = json.loads(batch["shard_info"][i])
            touched.add(s)
        rows = np.flatnonzero(~end)
        for s in np.unique(shards[rows]):
            idx = rows[shards[rows] == s]
            seen = self.keys[s]
            keep = []
            for i in idx:
                k = str(batch["key"][i])
                if k not in seen:
                    seen.add(k)
                    keep.append(i)
            if keep:
                self.parts[s].append({name: np.asarray(col)[keep] for name, col in batch.items()})
            touched.add(s)
        return [s for s in sorted(touched) if s in self.expected and len(self.keys[s]) >= self.expected[s]]

    def pop(self, shard: str) -> tuple[dict[str, np.ndarray] | None, dict]:
        parts = self.parts.pop(shard, [])
        self.keys.pop(shard, None)
        self.expected.pop(shard, None)
        info = self.info.pop(shard, {})
        if not parts:
            return None, info
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, info


def write_scored_shard(ds: Dataset, shard: str, cols: dict | None, info: dict, cfg: ScoreConfig,
                       input_sha: str | None, embed_dim: int | None) -> dict:
    """Write one shard's signals (+ embeddings), then its marker; return the marker record."""
    import pyarrow.parquet as pq

    from filtering.signals import to_table

    with_model = cfg.model is not None
    keep_emb = with_model and cfg.keep_embeddings
    if cols is None:  # an empty shard (or one whose tar was unreadable from the first byte) still gets a file
        from filtering.signals import signals_schema

        table = signals_schema(with_model).empty_table()
        emb = np.zeros((0, embed_dim or 0), dtype=np.float16)
    else:
        order = np.argsort(np.asarray(cols["key"]).astype(str), kind="stable")  # deterministic row order
        cols = {k: np.asarray(v)[order] for k, v in cols.items()}
        table = to_table(cols, with_model)
        emb = np.asarray(cols["image_embedding"], dtype=np.float16) if keep_emb else None
    files = {}
    sig_url = ds.shard_file(shard, "parquet", "signals")
    with atomic_write(sig_url, "wb") as f:
        pq.write_table(table, f)
    files[f"signals/{shard}.parquet"] = file_record(*fs_and_path(sig_url))
    if keep_emb:
        emb_url = ds.shard_file(shard, "npy", "embeddings")
        with atomic_write(emb_url, "wb") as f:
            np.save(f, emb)
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
    record = {"samples": table.num_rows, "ok": int(decodable.sum()), "reasons": dict(reasons), "files": files,
              "model": model_key(cfg), "input_sha256": input_sha, "read": info, "shard": shard}
    ds.write_marker(shard, record, "signals")
    return record


# --- the stage -----------------------------------------------------------------------------------------------------
def shards_to_score(ds: Dataset, cfg: ScoreConfig) -> tuple[dict[str, dict], list[str]]:
    """(input markers, shards whose signals are missing, damaged, or from another model or input)."""
    inputs = ds.done_shards("shards")
    done = ds.done_shards("signals")
    todo = []
    for shard, rec in inputs.items():
        mark = done.get(shard)
        input_sha = (rec.get("files") or {}).get(f"shards/{shard}.tar", {}).get("sha256")
        fresh = mark is not None and mark.get("model") == model_key(cfg) and mark.get("input_sha256") == input_sha
        if fresh and not ds.verify_shard(mark):
            continue
        if mark is not None:
            log.info("score: rescoring shard %s (input, model or files changed)", shard)
            ds.remove_marker(shard, "signals")
        todo.append(shard)
    return inputs, todo


def plan_resources(cfg: ScoreConfig, cluster: dict) -> dict:
    """Actors, CPUs and GPUs that leave room for read tasks (actors on every CPU starve reads: ray#44687)."""
    cpus = float(cluster.get("cpus") or 1)
    gpus = float(cluster.get("gpus") or 0)
    if cfg.model is None:  # signals only: read tasks are the whole stage
        return {"actors": 0, "actor_cpus": 0.0, "actor_gpus": 0.0, "device": "cpu", "threads": 1,
                "read_cpus": min(cfg.read_num_cpus, cpus)}
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
    actor_gpus = cfg.actor_num_gpus if cfg.actor_num_gpus is not None else (1.0 if use_gpu else 0.0)
    if actor_gpus > 0 and gpus == 0:
        raise ConfigError(f"score: device {cfg.device!r} / actor_num_gpus {actor_gpus} asks for a GPU, but the Ray "
                          "cluster has none (set device: cpu, or run on a cluster with GPUs)")
    actors = cfg.actors
    if actor_gpus > 0 and gpus > 0:
        actors = min(actors, max(1, int(gpus // actor_gpus)))
    read_cpus = cfg.read_num_cpus
    if cpus < read_cpus + min(cfg.actor_num_cpus, 1.0):
        # a tiny cluster: reads and the actor share it, or one of them could never be scheduled
        read_cpus = cpus / 2
        return {"actors": 1, "actor_cpus": cpus / 2, "actor_gpus": actor_gpus, "device": "cuda" if use_gpu else "cpu",
                "threads": 1, "read_cpus": read_cpus}
    room = cpus - read_cpus
    fit = max(1, int(room // cfg.actor_num_cpus)) if room >= cfg.actor_num_cpus else 1
    if fit < actors:
        log.warning("score: %d actors x %.2g CPUs leave no CPU for reads on %.0f CPUs; using %d",
                    actors, cfg.actor_num_cpus, cpus, fit)
        actors = fit
    actor_cpus = min(cfg.actor_num_cpus, room / actors)
    return {"actors": actors, "actor_cpus": actor_cpus, "actor_gpus": actor_gpus,
            "device": "cuda" if use_gpu else "cpu", "threads": max(1, int(round(actor_cpus))), "read_cpus": read_cpus}


def build_dataset(ds: Dataset, shards: list[str], cfg: ScoreConfig, resources: dict, preprocess_cfg: dict | None):
    """The Ray Data pipeline: read tasks, then (with a model) the scorer actor pool."""
    import ray

    from filtering.dfn import DFNScorer

    items = [{"shard": s, "url": ds.shard_file(s, "tar")} for s in shards]
    data = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # `memory` is a real reservation, and it also keeps Ray Data from fusing reads into the model actors (it fuses
    # ops whose remote args match), which would run decode and inference one after the other in one process.
    data = data.map_batches(read_shard, batch_size=1, num_cpus=resources["read_cpus"],
                            memory=cfg.read_memory_mb * 1024 * 1024,
                            fn_kwargs={"chunk_rows": cfg.chunk_rows, "max_pixels": cfg.max_image_pixels,
                                       "preprocess_cfg": preprocess_cfg})
    if cfg.model is not None:
        data = data.map_batches(
            DFNScorer,
            fn_constructor_kwargs={"spec": cfg.model.model_dump(), "device": resources["device"],
                                   "num_threads": resources["threads"]},
            compute=ray.data.ActorPoolStrategy(size=resources["actors"]),
            num_cpus=resources["actor_cpus"], num_gpus=resources["actor_gpus"] or None,
            batch_size=cfg.batch_size, batch_format="numpy")
    # Ray Data merges a task's outputs up to `target_max_block_size` (128 MiB) before passing them on, so a shard's
    # crops would reach the model only once the whole shard is read; chunk-sized blocks let the actor start on a
    # shard's first rows while the rest is decoded. `data.context` is this dataset's own copy of the context.
    row_bytes = 2048 + (int(np.prod(preprocess_cfg["size"])) * 3 if preprocess_cfg else 0)
    data.context.target_max_block_size = max(1 << 20, cfg.chunk_rows * row_bytes)
    return data


def run(ctx: StageContext, cfg: ScoreConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from filtering.signals import signals_schema
    from pipeline.runner import StageSummary, aggregate
    from pipeline.summary import print_stage_summary

    t0 = time.time()
    cfg = resolve_model(ctx, cfg)
    ds = ctx.dataset(cfg.input)
    inputs, todo = shards_to_score(ds, cfg)
    ds.intact_shards(todo)  # a download shard damaged on disk is reported here, not half-scored
    if not inputs:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: dataset {ds.url} has no complete "
                          "shards to score (run the download stage first)")
    preprocess_cfg = cfg.model.preprocess_cfg() if cfg.model else None  # fails early on a bad model name
    resources, scored_now, embed_dim, first_batch = {}, 0, None, None
    if todo:
        resources = plan_resources(cfg, ctx.init_ray())
        collector = ShardCollector()
        bar = tqdm(total=len(inputs), initial=len(inputs) - len(todo), desc="score", unit="shard")
        data = build_dataset(ds, todo, cfg, resources, preprocess_cfg)
        for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
            if first_batch is None:
                first_batch = time.time() - t0  # workers, actors and the model starting: not per-sample cost
            if "image_embedding" in batch:
                embed_dim = int(np.asarray(batch["image_embedding"]).shape[1])
            for shard in collector.add(batch):
                cols, info = collector.pop(shard)
                input_sha = (inputs[shard].get("files") or {}).get(f"shards/{shard}.tar", {}).get("sha256")
                rec = write_scored_shard(ds, shard, cols, info, cfg, input_sha, embed_dim)
                scored_now += rec["samples"]
                bar.update(1)
                bar.set_postfix_str(f"{scored_now / max(time.time() - t0, 1e-6):.0f} samples/s")
        bar.close()
    records = {k: v for k, v in ds.done_shards("signals").items() if k in inputs}
    missing = sorted(set(inputs) - set(records))
    samples, ok, reasons = aggregate(records)
    wall = time.time() - t0
    summary = StageSummary(stage=ctx.stage, dataset=ds.url, shards_total=len(inputs), shards_done=len(records),
                           shards_skipped=len(inputs) - len(todo), shards_failed=missing, retries_used=0,
                           samples=samples, ok=ok, reasons=reasons, wall_seconds=wall)
    section = {
        **summary.as_dict(),
        "kind": "score",
        "run_samples_per_s": round(scored_now / max(wall, 1e-6), 2),
        "startup_seconds": round(first_batch, 2) if first_batch is not None else None,
        "model": cfg.model.model_dump() if cfg.model else None,
        "model_key": model_key(cfg),
        "signals": signals_schema(cfg.model is not None).names,
        "embeddings": bool(cfg.model is not None and cfg.keep_embeddings),
        "resources": resources,
        "config_hash": config_hash(cfg),
        "checksums": {s: {f: v["sha256"] for f, v in r.get("files", {}).items()} for s, r in sorted(records.items())},
    }
    ds.update_manifest(ctx.stage, section)
    print_stage_summary(ctx.stage, summary, section)
    if missing:
        raise RuntimeError(f"score: shards {', '.join(missing)} were not written; run the same command again")
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

