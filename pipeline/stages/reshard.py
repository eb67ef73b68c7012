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


def read_kept(ds: Dataset, recipe: str):
    """The kept samples as a table (uid, shard, key), sorted by uid (then shard, key), read column-wise: a
    selection of millions never becomes a Python object per row; and, for a selection that judged captions, each
    kept uid's kept captions (best first), else None."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = fs_and_path(ds.sub("selection", f"{recipe}.parquet"))
    if not fs.exists(path):
        raise ConfigError(f"reshard: {ds.url} has no selection/{recipe}.parquet; run a filter stage with "
                          f"recipe {recipe!r} first")
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
        f.seek(0)
        t = pq.read_table(f, columns=["uid", "shard", "key", "kept"] + (["captions"] if "captions" in names else []))
    t = t.filter(pc.fill_null(t.column("kept"), False))
    captions = None
    if "captions" in names:
        captions = {u: [c for c in caps if c["kept"]] for u, caps in
                    zip(t.column("uid").to_pylist(), t.column("captions").to_pylist(), strict=True)}
    kept = t.select(["uid", "shard", "key"])
    order = pc.sort_indices(kept, sort_keys=[(c, "ascending") for c in ("uid", "shard", "key")])
    return kept.take(order).combine_chunks() if kept.num_rows else pa.table(
        {c: pa.array([], pa.string()) for c in ("uid", "shard", "key")}), captions


class Plan:
    """Which kept samples go to which output shard: `kept` (uid, shard, key, sorted by uid) and, per output shard,
    row indices into it. Shards are materialised as tuples one at a time (`part`)."""

    def __init__(self, kept, parts: list[np.ndarray]):
        self.kept, self.parts = kept, parts

    def __len__(self) -> int:
        return len(self.parts)

    def part(self, i: int) -> list[tuple[str, str, str]]:
        import pyarrow as pa

        t = self.kept.take(pa.array(self.parts[i]))
        return list(zip(*(t.column(c).to_pylist() for c in ("uid", "shard", "key")), strict=True))

    def sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def source_keys(self, only: set[int] | None = None) -> dict[str, set[str]]:
        """source shard -> the keys the output shards (`only`: those) read from it."""
        import pyarrow as pa

        rows = np.concatenate([p for i, p in enumerate(self.parts) if only is None or i in only] or [np.empty(0,
                                                                                                      np.int64)])
        t = self.kept.take(pa.array(rows, type=pa.int64())).select(["shard", "key"])
        wanted: dict[str, set[str]] = defaultdict(set)
        for shard, key in zip(t.column("shard").to_pylist(), t.column("key").to_pylist(), strict=True):
            wanted[shard].add(key)
        return wanted


def plan_shards(kept, samples_per_shard: int, seed: int) -> Plan:
    """Shuffle (by seed, from uid order) and split into ceil(n / samples_per_shard) shards of near-equal size."""
    n = kept.num_rows
    if not n:
        return Plan(kept, [])
    order = np.random.default_rng(seed).permutation(n)
    return Plan(kept, np.array_split(order, math.ceil(n / samples_per_shard)))


def plan_hash(plan: Plan, captions: dict[str, list[dict]] | None = None) -> str:
    """A digest of the plan: every output shard's uids in order (and, with judged captions, each one's kept
    captions). Hashed from the uids' bytes shard by shard, no Python string per sample unless captions count."""
    import pyarrow as pa

    h = hashlib.sha256()
    uids = plan.kept.column("uid").combine_chunks() if plan.kept.num_rows else None
    for i, part in enumerate(plan.parts):
        h.update(f"#{i}:".encode())
        if captions:
            for uid in uids.take(pa.array(part)).to_pylist():
                h.update(uid.encode())
                for c in captions.get(uid, []):  # other kept captions are another output
                    h.update(f"|{c['source']}:{c['text']}".encode())
            continue
        taken = uids.take(pa.array(part))  # one contiguous buffer: the uids' UTF-8 bytes back to back
        offsets = np.frombuffer(taken.buffers()[1], np.int32, len(taken) + 1, taken.offset * 4)
        h.update(memoryview(taken.buffers()[2])[int(offsets[0]):int(offsets[-1])] if len(taken) else b"")
    return h.hexdigest()[:16]


def index_sources(tars: dict[str, str], wanted: dict[str, set[str]], num_cpus: float, max_in_flight: int,
                  retries: int) -> dict:
    """(source shard, key) -> {ext: MemberRange}, from the source tars' headers (`tars`: shard -> where its tar is
    read; `wanted`: shard -> the keys to find), one Ray task per source shard."""
    from pipeline.core import shards
    from pipeline.execution.shard_tasks import map_bounded

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


def plan_output(src: Dataset, cfg: ReshardConfig) -> tuple[Plan, dict | None, str, dict[str, int]]:
    """The plan of an output (no source read, no Ray): (plan, kept captions or None, plan id, sizes by tar name).
    Columnar throughout, so a selection of millions plans in seconds (bench/scale.py measures it)."""
    kept, captions = read_kept(src, cfg.recipe_name)
    if not kept.num_rows:
        raise RuntimeError(f"reshard: recipe {cfg.recipe_name!r} kept no samples of {src.url}; nothing to write")
    plan = plan_shards(kept, cfg.samples_per_shard, cfg.seed)
    sizes = {f"{i:05d}.tar": n for i, n in enumerate(plan.sizes())}
    return plan, captions, plan_hash(plan, captions), sizes


def run(ctx: StageContext, cfg: ReshardConfig) -> dict[str, Any]:
    import pyarrow.compute as pc

    from pipeline.execution.record import pending_shards
    from pipeline.execution.shard_tasks import run_shards

    t0 = time.time()
    src = ctx.dataset(cfg.input)
    out = ctx.dataset(ctx.output)
    plan, captions, plan_id, sizes = plan_output(src, cfg)
    # damaged sources are reported, not half-copied; an ingested-in-place shard's tar is where it was ingested from
    intact = src.intact_shards(sorted(pc.unique(plan.kept.column("shard")).to_pylist()))
    tars = {s: src.shard_source(s, "tar", rec) for s, rec in intact.items()}
    discard_stale(out, plan_id, len(plan))
    names = [f"{i:05d}" for i in range(len(plan))]
    todo = set(pending_shards(out, names, stage=ctx.stage))  # a damaged shard loses its marker: redone below
    ctx.init_ray()
    index = index_sources(tars, plan.source_keys({i for i, n in enumerate(names) if n in todo}), cfg.num_cpus,
                          cfg.max_in_flight, cfg.retries)
    jobs = [ShardJob(name, [(u, s, k, index.get((s, k), {}), (captions or {}).get(u)) for u, s, k in plan.part(i)]
                     if name in todo else None) for i, name in enumerate(names)]
    manifest = {"kind": "reshard", "source": cfg.input, "recipe": cfg.recipe_name, "seed": cfg.seed,
                "samples_per_shard": cfg.samples_per_shard, "plan": plan_id, "kept": plan.kept.num_rows,
                "sizes": sizes, "captions": caption_provenance_counts(captions),
                "config_hash": config_hash(cfg)}
    work = partial(write_shard, root=ctx.root, output=out.name, source=src.name, plan_id=plan_id)
    summary = run_shards(stage=ctx.stage, dataset=out, jobs=jobs, work=work, num_cpus=cfg.num_cpus,
                         max_in_flight=cfg.max_in_flight, retries=cfg.retries, manifest=manifest,
                         verify_done=False)  # verified just above
    write_json_atomic(out.sub("shards", "sizes.json"), sizes)
    log.info("reshard: %d samples in %d shards at %s (%.1fs)", plan.kept.num_rows, len(plan), out.url,
             time.time() - t0)
    return {"dataset": out.url, **summary.as_dict(), "sizes": sizes}
