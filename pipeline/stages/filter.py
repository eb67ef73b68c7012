"""The filter stage: apply a recipe (`configs/filters/<name>.yaml`) to the scored pool, without recomputing signals.

    winnow run configs/demo.yaml --stage filter

Reads `signals/*.parquet` (and `embeddings/*.npy` when a recipe deduplicates semantically) of every scored shard,
applies the recipe's ops in order, and writes `selection/<recipe>.parquet` (uid, shard, key, kept, and for every
dropped uid the step, op, value and detail that dropped it) plus `selection/<recipe>.json` (the funnel: samples
left after each op). Cheap to rerun with another recipe: score once, filter many.

A recipe that names an unknown op, or an op whose signal was not computed, fails before anything is read. A recipe
with `capfilt` also reads the caption stage's `captions/*.parquet` (synthetic captions and the judge's scores) and
its selection gains the per-caption verdicts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from pipeline.core.config import ConfigError, config_hash
from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path, write_json_atomic
from pipeline.core.storage import read_json_glob
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

ALWAYS_READ = ["uid", "shard", "key", "decodable", "decode_error", "dfn_score", "width", "height"]


class FilterConfig(StageConfig):
    recipe: str = Field(..., description="a recipe name in configs/filters/ (e.g. basic) or a YAML path")

    @field_validator("recipe")
    @classmethod
    def _recipe_parses(cls, value: str) -> str:
        from filtering.recipe import RecipeError, load_recipe, resolve_recipe

        try:
            resolve_recipe(value)
        except RecipeError:
            if "/" in value or value.endswith((".yaml", ".yml")):
                return value  # may be relative to the config file, unknown here: checked by preflight and run
            raise
        load_recipe(value)  # unknown ops and bad parameters are config errors, before any stage runs
        return value

    @property
    def recipe_name(self) -> str:
        """The selection's name, `selection/<recipe_name>.parquet`: the recipe file's stem."""
        return Path(self.recipe).stem

    @model_validator(mode="after")
    def _input(self) -> FilterConfig:
        if not self.input:
            raise ValueError("filter needs `input:` (the scored dataset)")
        return self


CONFIG = FilterConfig


def _base_dir(ctx: StageContext) -> Path | None:
    return Path(ctx.config_path).parent if ctx.config_path else None


def preflight(ctx: StageContext, cfg: FilterConfig) -> None:
    """Check the recipe against the signals this pipeline will have, before any stage runs.

    The signals come from an earlier score stage on the same dataset in this config, else from what is on disk.
    """
    from filtering.recipe import load_recipe
    from pipeline.stages import caption
    from pipeline.stages.score import ScoreConfig, planned_signals, signal_names

    recipe = load_recipe(cfg.recipe, _base_dir(ctx))
    earlier, captioned = [], None
    for name, stage in ctx.pipeline.stages.items():
        if name == ctx.stage:
            break
        if isinstance(stage, ScoreConfig) and stage.input == cfg.input:
            earlier.append((name, stage))
        if isinstance(stage, caption.CaptionConfig) and stage.input == cfg.input:
            captioned = caption.planned_signals(stage, ctx)
    extra = captioned if captioned is not None else caption.caption_signals(ctx.dataset(cfg.input))
    hint = " or by a caption stage (capfilt's probabilities need a calibrated filter: holdout or calibration)"
    if earlier:
        name, stage = earlier[-1]
        hint = (f" (stage {name!r} has model: null)" if not stage.has_model else "") + hint
        recipe.check(planned_signals(stage) | extra, hint)
        return
    signals = signal_names(ctx.dataset(cfg.input))
    if signals is None:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: dataset {cfg.input!r} has no scored "
                          "shards and no score stage comes before this filter")
    recipe.check(signals | extra, hint)


def load_pool(ds: Dataset, columns: list[str], embeddings: bool):
    """The scored pool of a dataset: every scored shard's signals (chosen columns) and, if asked, its embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from filtering.ops import Pool

    tables, embs = [], []
    for shard in sorted(ds.done_shards("signals")):
        fs, path = fs_and_path(ds.shard_file(shard, "parquet", "signals"))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            t = pf.read(columns=[c for c in columns if c in pf.schema_arrow.names])
        tables.append(t)
        if embeddings:
            fs, path = fs_and_path(ds.shard_file(shard, "npy", "embeddings"))
            with fs.open(path, "rb") as f:
                e = np.load(f)
            if len(e) != t.num_rows:
                raise RuntimeError(f"{ds.url}: embeddings/{shard}.npy has {len(e)} rows, signals {t.num_rows}")
            embs.append(e)
    table = pa.concat_tables(tables, promote_options="default") if tables else None
    emb = np.concatenate(embs) if embeddings and embs else None
    return Pool(table, emb)


def with_captions(ds: Dataset, pool, stage: str):
    """The pool with the caption stage's columns joined on (shard, key); every scored shard must be captioned."""
    import pyarrow as pa

    from filtering.capfilt import CAPTION_SIGNALS
    from filtering.ops import Pool
    from pipeline.stages.caption import FOLDER, read_captions

    missing = sorted(set(ds.done_shards("signals")) - set(ds.done_shards(FOLDER)))
    if missing:
        raise ConfigError(f"stages.{stage}: {len(missing)} scored shards of {ds.url} have no captions yet "
                          f"({', '.join(missing[:5])}); finish the caption stage first")
    caps = read_captions(ds)
    where = {(s, k): i for i, (s, k) in enumerate(zip(caps.column("shard").to_pylist(),
                                                      caps.column("key").to_pylist(), strict=True))}
    idx = [where.get((s, k)) for s, k in zip(pool.table.column("shard").to_pylist(),
                                              pool.table.column("key").to_pylist(), strict=True)]
    take = pa.array(idx, type=pa.int64())  # a null index (a row without captions) takes nulls
    table = pool.table
    for name in CAPTION_SIGNALS:
        table = table.append_column(name, caps.column(name).take(take))
    judges = set(caps.column("caption_filter").unique().to_pylist()) if caps.num_rows else set()
    return Pool(table, pool.embeddings, {**pool.context, "caption_calibration": caption_calibration(ds, judges)})


def caption_calibration(ds: Dataset, judges: set[str]) -> dict | None:
    """The calibration (Platt fit and held-out best cut) the caption stage on `ds` judged with, from its manifest
    section; of several caption stages, the one whose judge wrote the captions on disk."""
    found = [sec for sec in ds.manifest().get("stages", {}).values() if sec.get("kind") == "caption"]
    matching = [sec for sec in found if sec.get("caption_filter_id") in judges] or found
    return matching[-1].get("calibration") if matching else None


def run(ctx: StageContext, cfg: FilterConfig) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from filtering.capfilt import caption_counts
    from filtering.recipe import load_recipe
    from filtering.select import apply_recipe
    from pipeline.core.tables import fmt_seconds, print_summary
    from pipeline.stages.caption import caption_signals
    from pipeline.stages.score import signal_names

    t0 = time.time()
    recipe = load_recipe(cfg.recipe, _base_dir(ctx))
    ds = ctx.dataset(cfg.input)
    signals = signal_names(ds)
    if signals is None:
        raise ConfigError(f"{ctx.config_path or 'config'}: stages.{ctx.stage}: dataset {ds.url} has no scored "
                          "shards (run the score stage first)")
    recipe.check(signals | caption_signals(ds), " or by a caption stage")
    scored, downloaded = ds.done_shards("signals"), ds.done_shards("shards")
    unscored = sorted(set(downloaded) - set(scored))
    if unscored:
        # A fraction of a partial pool is a different cut: refuse rather than select from part of the data.
        raise ConfigError(f"stages.{ctx.stage}: {len(unscored)} of {len(downloaded)} shards of {ds.url} are not "
                          f"scored yet ({', '.join(unscored[:5])}...); finish the score stage first")

    pool = load_pool(ds, sorted(set(ALWAYS_READ) | recipe.requires()), "embedding" in recipe.requires())
    if recipe.requires() & caption_signals(ds):
        pool = with_captions(ds, pool, ctx.stage)
    selection = apply_recipe(recipe, pool, release=True)
    cuts = [{"op": op.label(), "threshold": op.cut, **(getattr(op, "rule", None) or {})} for op in recipe.ops
            if op.name == "capfilt" and getattr(op, "cut", None) is not None]

    sel_url = ds.sub("selection", f"{recipe.name}.parquet")
    with atomic_write(sel_url, "wb") as f:
        pq.write_table(selection.table, f)
    kept = selection.kept
    info = {
        "recipe": recipe.name, "recipe_file": recipe.source, "description": recipe.description, "ops": recipe.raw,
        "funnel": selection.funnel, "samples": pool.n, "kept": kept,
        "kept_fraction": round(kept / pool.n, 4) if pool.n else 0.0,
        "selection": f"selection/{recipe.name}.parquet", "file": file_record(*fs_and_path(sel_url)),
        **({"captions": counts} if (counts := caption_counts(selection.table)) else {}),
        **({"capfilt_cut": cuts[-1]} if cuts else {}),
    }
    write_json_atomic(ds.sub("selection", f"{recipe.name}.json"), info)
    wall = time.time() - t0
    section = {**info, "kind": "filter", "state": "complete", "ok": kept, "success_rate": info["kept_fraction"],
               "wall_seconds": round(wall, 2), "config_hash": config_hash(cfg)}
    ds.update_manifest(ctx.stage, section)

    rows: list[tuple[str, Any]] = [("dataset", ds.url), ("recipe", recipe.source)]
    for step in selection.funnel:
        cut = f"  (threshold {step['threshold']:.4g})" if "threshold" in step else ""
        rows.append((f"  {step['label']}", f"{step['left']} left, -{step['dropped']}{cut}"))
    for source in ("web", "synthetic") if counts else ():
        c = counts[source]
        rows.append((f"  {source} captions", f"{c['kept']} of {c['judged']} kept"))
    if cuts and cuts[-1].get("rule") == "auto":
        c = cuts[-1]
        web = c.get("web_probability")
        web_cut = "" if web is None or web == c["probability"] else \
            f"; web captions P(match) >= {web:.3f}, the best cut against unrelated captions only"
        rows.append(("  capfilt cut", f"P(match) >= {c['probability']:.3f}, chosen on the judge's held-out pairs "
                                      f"(balanced accuracy {c['balanced_accuracy']:.3f}){web_cut}"))
    rows += [("kept", f"{kept} of {pool.n} ({info['kept_fraction']:.1%})"), ("selection", sel_url),
             ("wall time", fmt_seconds(wall))]
    print_summary(f"stage {ctx.stage}: recipe {recipe.name}", rows)
    return {"dataset": ds.url, "selection": sel_url, "recipe": recipe.name, "kept": kept, "samples": pool.n,
            "funnel": selection.funnel, **({"capfilt_cut": cuts[-1]} if cuts else {})}


def read_selection_info(ds: Dataset) -> dict[str, dict]:
    """recipe name -> its selection/<recipe>.json (the funnel and counts), for the report."""
    return {info.get("recipe") or Path(p).stem: info for p, info in read_json_glob(ds.sub("selection"), "*.json")}
