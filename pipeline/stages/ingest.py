"""The ingest stage: data a user already holds becomes a winnow dataset, read by every later stage as a download is.

    winnow run configs/ingest_example.yaml --stage ingest

Sources (`source.kind`): `webdataset` tars in img2dataset's / DataComp's layout (a glob or brace pattern, local or
any fsspec URL), read in place by default: the dataset's parquet, markers and manifest are winnow's and point at the
source tars, of which nothing is written or copied (`copy: true` copies them); an image `folder` with captions; and
`parquet` / arrow files with image bytes. A folder or a parquet file has no tar to read in place, so it is written
as winnow shards. One source shard -> one dataset shard (`00000`, ... in the order the source names them), a Ray
task each, resumable and idempotent; every sample gets a uid (the JSON's DataComp uid, else its URL's MD5, else its
image's SHA-256: `pipeline.core.ids`), a verdict and a parquet row with every metadata field of the source.

A source shard that changed since it was ingested (size, mtime, etag) is reported and ingested again by the next
run; a later stage that meets a changed source fails, naming this stage as the one to rerun.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Any

from pydantic import Field, model_validator

from pipeline.core.config import config_hash
from pipeline.core.images import DEFAULT_MAX_PIXELS
from pipeline.ingest.config import SourceConfig
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


# `copy` is the setting's natural name; pydantic warns that it shadows BaseModel's deprecated `copy()`, which no
# code of winnow calls (`model_copy` is the one in use).
warnings.filterwarnings("ignore", message='Field name "copy" in "IngestConfig" shadows', category=UserWarning)


class IngestConfig(StageConfig):
    source: SourceConfig = Field(description="what to ingest: {kind: webdataset | folder | parquet, ...}")
    copy: bool | None = Field(
        None, description="copy webdataset tars into the dataset (default: read them in place); folder and parquet "
                          "sources are always written as shards")
    samples_per_shard: int = Field(10000, ge=1, description="images per shard of a folder or parquet source")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="bigger images are counted too_many_pixels")
    processes: int | None = Field(None, ge=1, description="shards in flight at once (default: cluster CPUs)")
    task_cpus: float = Field(1.0, gt=0, description="CPUs reserved per shard task")
    shard_retries: int = Field(2, ge=0, description="retries of a failed shard task")

    @model_validator(mode="after")
    def _shape(self) -> IngestConfig:
        if self.input is not None:
            raise ValueError("ingest reads `source:` (files you hold), not a dataset: drop `input`")
        if self.copy is False and self.source.kind != "webdataset":
            raise ValueError(f"copy: false: a {self.source.kind} source has no tars to read in place; it is written "
                             "as winnow shards (leave copy unset)")
        return self

    @property
    def copies(self) -> bool:
        return self.source.kind != "webdataset" or bool(self.copy)


CONFIG = IngestConfig


def plan(ctx: StageContext, cfg: IngestConfig) -> tuple[list, dict]:
    """The source's shards (each with its stamp) and what planning found, or a ConfigError naming the key."""
    from pipeline.ingest import folder, parquet, webdataset

    where = f"{ctx.config_path or 'config'}: stages.{ctx.stage}.source"
    if cfg.source.kind == "webdataset":
        return webdataset.plan(cfg.source, where), {}
    if cfg.source.kind == "folder":
        return folder.plan(cfg.source, where, cfg.samples_per_shard)
    return parquet.plan(cfg.source, where, cfg.samples_per_shard), {}


def preflight(ctx: StageContext, cfg: IngestConfig) -> None:
    """A pattern naming nothing or a missing column fails before any stage runs (tars are only listed here)."""
    if cfg.source.kind == "webdataset":
        from pipeline.ingest.webdataset import source_urls

        source_urls(cfg.source, f"{ctx.config_path or 'config'}: stages.{ctx.stage}.source")
        return
    plan(ctx, cfg)


def run(ctx: StageContext, cfg: IngestConfig) -> dict[str, Any]:
    from pipeline.core.version import code_version
    from pipeline.execution.shard_tasks import ShardJob, run_shards
    from pipeline.ingest.shard import IngestShard

    ds = ctx.dataset(ctx.output)
    units, found = plan(ctx, cfg)
    settings = config_hash({"source": cfg.source.model_dump(mode="json"), "copy": cfg.copies,
                            "max_pixels": cfg.max_image_pixels, "samples_per_shard": cfg.samples_per_shard})
    stamps = {u.shard: u.stamp for u in units}
    changed = [s for s, mark in sorted(ds.done_shards().items())
               if s in stamps and mark.get("settings") == settings and mark.get("stamp") != stamps[s]]
    for shard in changed:
        log.warning("%s: source shard %s changed since it was ingested; ingesting it again", ctx.stage, shard)
    drop_gone_shards(ctx, ds, set(stamps))
    cluster = ctx.init_ray()
    work = IngestShard(ctx.root, ctx.output, cfg.source, cfg.copies, cfg.max_image_pixels, settings,
                       key_digits=max(4, len(str(cfg.samples_per_shard - 1))))
    summary = run_shards(
        stage=ctx.stage, dataset=ds, jobs=[ShardJob(u.shard, u) for u in units], work=work, num_cpus=cfg.task_cpus,
        max_in_flight=cfg.processes or max(1, int(cluster["cpus"] // cfg.task_cpus)), retries=cfg.shard_retries,
        current=lambda s, mark: mark.get("stamp") == stamps.get(s) and mark.get("settings") == settings,
        manifest={"kind": "ingest", "config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg),
                  "source_kind": cfg.source.kind, "mode": work.mode, "code_version": code_version(),
                  "cluster": cluster, **found})
    extra = finish(ctx, ds, [u.shard for u in units], changed, work.mode)
    return {"dataset": ds.url, **summary.as_dict(), **extra}


def drop_gone_shards(ctx: StageContext, ds, planned: set[str]) -> None:  # noqa: ANN001
    """Shards of an earlier ingest that the source no longer names leave the dataset (marker first, then files):
    the dataset holds what the source holds."""
    from pipeline.core.layout import fs_and_path

    for shard in sorted(set(ds.done_shards()) - planned):
        log.warning("%s: the source no longer has shard %s; removing it from %s", ctx.stage, shard, ds.url)
        ds.remove_marker(shard)
        for ext in ("parquet", "tar"):
            fs, path = fs_and_path(ds.shard_file(shard, ext))
            if fs.exists(path):
                fs.rm(path)


def finish(ctx: StageContext, ds, shards: list[str], changed: list[str], mode: str) -> dict:  # noqa: ANN001
    """Add what the markers say beyond the runner's counts (uid rules, skipped members, read errors, sizes) to the
    manifest section, and print them."""
    from pipeline.core.tables import print_summary
    from pipeline.ingest.config import MODES

    marks = {s: m for s, m in ds.done_shards().items() if s in set(shards)}
    rules, members = Counter(), Counter()
    for m in marks.values():
        rules.update(m.get("uid_rules") or {})
        members.update(m.get("members_skipped") or {})
    errors = {s: m["read_error"] for s, m in sorted(marks.items()) if m.get("read_error")}
    own = sum(f["size"] for m in marks.values() for f in (m.get("files") or {}).values() if not f.get("url"))
    read = sum(f["size"] for m in marks.values() for f in (m.get("files") or {}).values() if f.get("url"))
    extra = {"uid_rules": dict(rules.most_common()), "members_skipped": dict(members.most_common()),
             "read_errors": errors, "changed_sources_reingested": changed, "dataset_bytes": own,
             "source_bytes_in_place": read}
    section = ds.manifest()["stages"][ctx.stage]
    ds.update_manifest(ctx.stage, {**section, **extra})
    rows: list[tuple[str, Any]] = [("mode", MODES[mode])]
    if read:
        rows.append(("size on disk", f"{own / 1e6:.2f} MB of winnow files for {read / 1e6:.2f} MB of source tars "
                                     f"({own / read:.1%})"))
    rows.append(("uid rules", ", ".join(f"{k} {v}" for k, v in rules.most_common()) or "-"))
    rows += [(f"  member skipped: {k}", v) for k, v in members.most_common()]
    rows += [(f"  read error: shard {s}", e) for s, e in list(errors.items())[:5]]
    if changed:
        rows.append(("changed sources", f"{len(changed)} re-ingested ({', '.join(changed[:5])})"))
    print_summary(f"stage {ctx.stage}: source", rows)
    return extra
