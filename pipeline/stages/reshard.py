"""The reshard stage: the samples a recipe kept, written into new balanced webdataset shards for training.

    winnow run configs/demo.yaml --stage reshard

Reads `selection/<recipe>.parquet` of the input dataset, shuffles the kept uids with a seed (sorted by uid first,
so the order depends only on the selection and the seed), splits them into ceil(kept / samples_per_shard) shards
whose sizes differ by at most one, and writes `<output>/shards/00000.tar` ... with the original members (image,
caption, metadata) under the uid as key; the JSON gains `source` (dataset, shard, key) for provenance. Then
`shards/sizes.json` (open_clip's `--train-num-samples` lookup) is written, last.

A selection that judged captions (the `capfilt` op) says which captions of each image to keep: the JSON gets
`captions` (every kept caption, best first: training draws one of them each time it reads the sample) and
`caption_provenance` (each one's source, web or synthetic, the judge's score and probability, and the judge), and
`<key>.txt` holds the first, so a reader that knows only `.txt` sees the best kept caption.

Source members are located from tar headers (no extraction) and read by byte range, so each output shard reads only
the bytes it needs. Output shards are resumable through the runner's done markers; a marker made for a different
plan (another selection, seed or shard size) is discarded and the output rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from functools import partial
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from pipeline.core.config import ConfigError, config_hash
from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path, write_json_atomic
from pipeline.execution.shard_tasks import ShardJob
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


class ReshardConfig(StageConfig):
    recipe: str = Field(..., description="whose selection to write: selection/<recipe>.parquet of `input`")
    samples_per_shard: int = Field(10000, ge=1, description="target samples per output shard")
    seed: int = Field(0, description="shuffle seed")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per shard-writing task")
    max_in_flight: int = Field(4, ge=1, description="shard tasks submitted at once")
    retries: int = Field(2, ge=0, description="retries of a failed shard task")

    @model_validator(mode="after")
    def _names(self) -> ReshardConfig:
        if not self.input:
            raise ValueError("reshard needs `input:` (the filtered dataset)")
        return self

    @property
    def recipe_name(self) -> str:
        return self.recipe.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")

    def output_dataset(self, stage: str) -> str:
        return self.output or f"{self.input}-{self.recipe_name}"


CONFIG = ReshardConfig


def read_kept(ds: Dataset, recipe: str) -> tuple[list[tuple[str, str, str]], dict[str, list[dict]] | None]:
    """(uid, shard, key) of the kept samples, sorted by uid; and, for a selection that judged captions, each kept
    uid's kept captions (best first), else None."""
    import pyarrow.parquet as pq

    fs, path = fs_and_path(ds.sub("selection", f"{recipe}.parquet"))
    if not fs.exists(path):
        raise ConfigError(f"reshard: {ds.url} has no selection/{recipe}.parquet; run a filter stage with "
                          f"recipe {recipe!r} first")
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
        f.seek(0)
        t = pq.read_table(f, columns=["uid", "shard", "key", "kept"] + (["captions"] if "captions" in names else []))
    kept = t.column("kept").to_pylist()
    rows = [(u, s, k) for u, s, k, keep in zip(*(t.column(c).to_pylist() for c in ("uid", "shard", "key")), kept,
                                               strict=True) if keep]
    captions = None
    if "captions" in names:
        captions = {u: [c for c in caps if c["kept"]] for u, caps, keep in
                    zip(t.column("uid").to_pylist(), t.column("captions").to_pylist(), kept, strict=True) if keep}
    return sorted(rows), captions


def plan_shards(kept: list[tuple[str, str, str]], samples_per_shard: int, seed: int) -> list[list[tuple]]:
    """Shuffle (by seed, from uid order) and split into ceil(n / samples_per_shard) shards of near-equal size."""
    if not kept:
        return []
    order = np.random.default_rng(seed).permutation(len(kept))
    n_out = math.ceil(len(kept) / samples_per_shard)
    return [[kept[i] for i in part] for part in np.array_split(order, n_out)]


def plan_hash(plan: list[list[tuple]], captions: dict[str, list[dict]] | None = None) -> str:
    h = hashlib.sha256()
    for i, part in enumerate(plan):
        h.update(f"#{i}:".encode())
        for uid, _, _ in part:
            h.update(uid.encode())
            for c in (captions or {}).get(uid, []):  # other kept captions are another output
                h.update(f"|{c['source']}:{c['text']}".encode())
    return h.hexdigest()[:16]


def index_sources(tars: dict[str, str], plan: list[list[tuple]], num_cpus: float, max_in_flight: int,
                  retries: int) -> dict:
    """(source shard, key) -> {ext: MemberRange}, from the source tars' headers (`tars`: shard -> where its tar is
    read), one Ray task per source shard."""
    from pipeline.core import shards
    from pipeline.execution.shard_tasks import map_bounded

    wanted: dict[str, set[str]] = defaultdict(set)
    for part in plan:
        for _, shard, key in part:
            wanted[shard].add(key)
    found = map_bounded(shards.index_samples, {s: (tars[s], wanted[s]) for s in sorted(wanted)},
                        num_cpus=num_cpus, max_in_flight=max_in_flight, retries=retries, label="reshard index")
    index: dict[tuple[str, str], dict] = {}
    for shard, members in sorted(found.items()):
        missing = wanted[shard] - set(members)
        if missing:
            raise RuntimeError(f"reshard: {len(missing)} selected samples are not in {tars[shard]} "
                               f"(e.g. {sorted(missing)[:3]}); the shard changed since it was filtered")
        index.update({(shard, k): v for k, v in members.items()})
    return index


def write_shard(job: ShardJob, root: str, output: str, source: str, plan_id: str) -> dict:
    """Runner work function: read the job's samples by byte range, write the output tar + parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.shards import read_ranges, write_tar
    from pipeline.core.timing import TimeSplit

    src, out, split = Dataset(root, source), Dataset(root, output), TimeSplit()
    by_source: dict[str, list[tuple[int, str, Any]]] = defaultdict(list)
    for i, (_, shard, _, members, _) in enumerate(job.payload):
        for ext, rng in members.items():
            by_source[shard].append((i, ext, rng))
    files: list[dict[str, bytes]] = [{} for _ in job.payload]
    for shard, wanted in by_source.items():
        ranges = split.timed(read_ranges(src.shard_source(shard, "tar"), [w[2] for w in wanted]), "reading")
        for (i, ext, _), data in zip(wanted, ranges, strict=True):
            files[i][ext] = data
    samples, rows = [], []
    for (uid, shard, key, _, kept_captions), members in zip(job.payload, files, strict=True):
        try:
            meta = json.loads(members["json"]) if "json" in members else {}
        except ValueError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        meta.update({"uid": uid, "key": uid, "source": {"dataset": source, "shard": shard, "key": key}})
        if kept_captions:
            with_captions(meta, members, kept_captions)
        members["json"] = json.dumps(meta, sort_keys=True).encode()
        caption = members["txt"].decode("utf-8", "replace") if "txt" in members else str(meta.get("caption") or "")
        samples.append((uid, members))
        rows.append({"uid": uid, "key": uid, "caption": caption, "url": meta.get("url"), "source_dataset": source,
                     "source_shard": shard, "source_key": key, "captions": len(meta.get("captions") or [caption])})
    tar_url, pq_url = out.shard_file(job.shard, "tar"), out.shard_file(job.shard, "parquet")
    schema = pa.schema([(c, pa.string()) for c in ("uid", "key", "caption", "url", "source_dataset", "source_shard",
                                                   "source_key")] + [("captions", pa.int32())])
    with split.part("writing"):
        n = write_tar(tar_url, samples)
        with atomic_write(pq_url, "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), f)
    return {"samples": n, "ok": n, "reasons": {}, "plan": plan_id, "time_split": split.as_dict(),
            "files": {f"shards/{job.shard}.{e}": file_record(*fs_and_path(u)) for e, u in (("tar", tar_url),
                                                                                          ("parquet", pq_url))}}


def with_captions(meta: dict, members: dict, kept: list[dict]) -> None:
    """Every kept caption with its provenance into the sample's JSON; the first (best) into `.txt`."""
    meta["captions"] = [c["text"] for c in kept]
    meta["caption_provenance"] = [{k: c.get(k) for k in ("text", "source", "score", "probability", "judge")}
                                  for c in kept]
    members["txt"] = kept[0]["text"].encode()


def discard_stale(out: Dataset, plan_id: str, n_out: int) -> None:
    """Remove markers (and sizes.json) left by a different plan, so every output shard is rebuilt."""
    done = out.done_shards("shards")
    stale = any(r.get("plan") != plan_id for r in done.values()) or any(int(s) >= n_out for s in done)
    if stale:
        log.info("reshard: output %s was written for another selection; rebuilding it", out.url)
        for shard in done:
            out.remove_marker(shard, "shards")
        for shard in [s for s in done if int(s) >= n_out]:
            for ext in ("tar", "parquet"):
                fs, path = fs_and_path(out.shard_file(shard, ext))
                if fs.exists(path):
                    fs.rm(path)
    fs, path = fs_and_path(out.sub("shards", "sizes.json"))
    if stale and fs.exists(path):
        fs.rm(path)


def caption_provenance_counts(captions: dict[str, list[dict]] | None) -> dict | None:
    """Kept captions by source, over the written images (None without judged captions)."""
    if captions is None:
        return None
    out: dict[str, int] = defaultdict(int)
    for kept in captions.values():
        for c in kept:
            out[c["source"]] += 1
    return {"images": len(captions), **dict(sorted(out.items()))}


def run(ctx: StageContext, cfg: ReshardConfig) -> dict[str, Any]:
    from pipeline.execution.record import pending_shards
    from pipeline.execution.shard_tasks import run_shards

    t0 = time.time()
    src = ctx.dataset(cfg.input)
    out = ctx.dataset(ctx.output)
    kept, captions = read_kept(src, cfg.recipe_name)
    # damaged sources are reported, not half-copied; an ingested-in-place shard's tar is where it was ingested from
    intact = src.intact_shards(sorted({shard for _, shard, _ in kept}))
    tars = {s: src.shard_source(s, "tar", rec) for s, rec in intact.items()}
    if not kept:
        raise RuntimeError(f"reshard: recipe {cfg.recipe_name!r} kept no samples of {src.url}; nothing to write")
    plan = plan_shards(kept, cfg.samples_per_shard, cfg.seed)
    plan_id = plan_hash(plan, captions)
    discard_stale(out, plan_id, len(plan))
    names = [f"{i:05d}" for i in range(len(plan))]
    todo = set(pending_shards(out, names, stage=ctx.stage))  # a damaged shard loses its marker: redone below
    ctx.init_ray()
    index = index_sources(tars, [p for n, p in zip(names, plan, strict=True) if n in todo], cfg.num_cpus,
                          cfg.max_in_flight, cfg.retries)
    jobs = [ShardJob(name, [(u, s, k, index.get((s, k), {}), (captions or {}).get(u)) for u, s, k in part]
                     if name in todo else None) for name, part in zip(names, plan, strict=True)]
    sizes = {f"{name}.tar": len(part) for name, part in zip(names, plan, strict=True)}
    manifest = {"kind": "reshard", "source": cfg.input, "recipe": cfg.recipe_name, "seed": cfg.seed,
                "samples_per_shard": cfg.samples_per_shard, "plan": plan_id, "kept": len(kept), "sizes": sizes,
                "captions": caption_provenance_counts(captions),
                "config_hash": config_hash(cfg)}
    work = partial(write_shard, root=ctx.root, output=out.name, source=src.name, plan_id=plan_id)
    summary = run_shards(stage=ctx.stage, dataset=out, jobs=jobs, work=work, num_cpus=cfg.num_cpus,
                         max_in_flight=cfg.max_in_flight, retries=cfg.retries, manifest=manifest,
                         verify_done=False)  # verified just above
    write_json_atomic(out.sub("shards", "sizes.json"), sizes)
    log.info("reshard: %d samples in %d shards at %s (%.1fs)", len(kept), len(plan), out.url, time.time() - t0)
    return {"dataset": out.url, **summary.as_dict(), "sizes": sizes}
