"""What the report reads: manifests of every dataset under the run root, the scored pool's signals, the filter
selections, training results (`train.json`, `eval.json`), and thumbnails read from the shards by byte range."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.images import IMAGE_EXTS, open_rgb
from pipeline.core.layout import Dataset, fs_and_path, join
from pipeline.core.storage import read_json_glob
from pipeline.report.html import jpeg_uri

log = logging.getLogger(__name__)

SIGNAL_COLUMNS = ["uid", "shard", "key", "caption", "width", "height", "aspect_ratio", "image_bytes", "decodable",
                  "decode_error", "caption_chars", "caption_words", "generic_caption", "generic_reason", "dfn_score"]


def find_manifests(root: str) -> dict[str, dict]:
    """dataset name -> manifest, for every `<root>/<name>/manifest.json`."""
    return {p.rstrip("/").split("/")[-2]: m for p, m in read_json_glob(root, "*/manifest.json")}


def find_results(root: str, names: tuple[str, ...] = ("train.json", "eval.json")) -> dict[str, dict]:
    """'<dir>/<file>' -> JSON, for training and evaluation results one or two folders below the run root."""
    base = fs_and_path(root)[1].rstrip("/")
    out = {}
    for pattern in ("*/{n}", "*/*/{n}"):
        for name in names:
            for p, found in read_json_glob(root, pattern.format(n=name)):
                out[p[len(base) + 1:]] = found
    return out


# A pool larger than this is shown from a sample of whole scored shards (chosen by a fixed seed): the report opens
# in seconds and stays small at any pool size, and says that it sampled. Counts in the funnels stay exact: they come
# from the filter's summary, not from rows.
SAMPLE_ROWS = 200_000
SAMPLE_SEED = 0


@dataclass
class Sample:
    """Which scored shards the report read: all of them, or a sample (`sampled`)."""

    shards: list[str]
    rows: int  # rows in the shards read
    total_shards: int
    total_rows: int

    @property
    def sampled(self) -> bool:
        return len(self.shards) < self.total_shards

    def note(self) -> str:
        return (f"drawn from a sample of {self.rows:,} of {self.total_rows:,} samples ({len(self.shards):,} of "
                f"{self.total_shards:,} scored shards, chosen at random)")


def _shard_rows(ds: Dataset, shard: str, record: dict) -> int:
    if isinstance(record.get("samples"), int):
        return record["samples"]
    import pyarrow.parquet as pq

    fs, path = fs_and_path(ds.shard_file(shard, "parquet", "signals"))
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def choose_sample(ds: Dataset, max_rows: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> Sample:
    """Every scored shard when the pool has at most `max_rows` rows (the row counts come from the done markers),
    else shards in a seeded random order until `max_rows` rows are covered, in name order."""
    done = ds.done_shards("signals")
    names = sorted(done)
    if not names:
        return Sample([], 0, 0, 0)
    counts = {s: _shard_rows(ds, s, done[s]) for s in names}
    total = sum(counts.values())
    if total <= max_rows:
        return Sample(names, total, len(names), total)
    picked, rows = [], 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        picked.append(names[i])
        rows += counts[names[i]]
        if rows >= max_rows:
            break
    return Sample(sorted(picked), rows, len(names), total)


def load_signals(ds: Dataset, sample: Sample | None = None):
    """The scored pool as a pandas DataFrame (report columns only), or None when nothing is scored; only the
    shards of `sample` when given."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for shard in sample.shards if sample is not None else sorted(ds.done_shards("signals")):
        fs, path = fs_and_path(ds.shard_file(shard, "parquet", "signals"))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            frames.append(pf.read(columns=[c for c in SIGNAL_COLUMNS if c in pf.schema_arrow.names]).to_pandas())
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    df["min_side"] = np.fmin(df["width"].astype(float), df["height"].astype(float))
    return df


def load_selections(ds: Dataset, sample: Sample | None = None) -> dict[str, tuple[dict, Any]]:
    """recipe -> (selection/<recipe>.json, selection/<recipe>.parquet as a DataFrame: the rows of the sampled
    shards only, when the report samples)."""
    import pyarrow.parquet as pq

    out = {}
    for p, info in read_json_glob(ds.sub("selection"), "*.json"):
        name = info.get("recipe") or p.rsplit("/", 1)[-1][:-5]
        try:
            fs, path = fs_and_path(ds.sub("selection", f"{name}.parquet"))
            with fs.open(path, "rb") as f:
                if sample is not None and sample.sampled:
                    table = pq.read_table(f, filters=[("shard", "in", sample.shards)])
                else:
                    table = pq.read_table(f)
                out[name] = (info, table.to_pandas())
        except OSError:
            log.warning("report: unreadable selection %s", p)
    return out


class Thumbnails:
    """Small JPEG data URIs of samples, read by byte range from the shards (headers indexed once per shard)."""

    def __init__(self, ds: Dataset, size: int = 128):
        self.ds, self.size = ds, size
        self.index: dict[str, dict] = {}
        self.cache: dict[tuple[str, str], str | None] = {}

    def __call__(self, shard: str, key: str) -> str | None:
        if (shard, key) not in self.cache:
            self.cache[(shard, key)] = self._make(shard, key)
        return self.cache[(shard, key)]

    def _make(self, shard: str, key: str) -> str | None:
        from pipeline.core.shards import index_samples, read_ranges

        url = self.ds.shard_source(shard, "tar")
        try:
            if shard not in self.index:
                self.index[shard] = index_samples(url)
            members = self.index[shard].get(key, {})
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                return None
            (data,) = read_ranges(url, [members[ext]])
            im = open_rgb(data, min_size=self.size)  # a JPEG decodes reduced to about the thumbnail's size
            im.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
            return jpeg_uri(buf.getvalue())
        except Exception as err:  # a thumbnail that cannot be made is a missing picture, not a failed report
            log.debug("report: no thumbnail for %s/%s: %s", shard, key, err)
            return None


@dataclass
class ReportData:
    """Everything a report section may use; sections render what exists and skip what does not."""

    root: str
    dataset: Dataset
    name: str = "winnow"
    pipeline: Any = None  # the PipelineConfig, when built from one
    manifests: dict[str, dict] = field(default_factory=dict)
    signals: Any = None  # pandas DataFrame of the scored pool, or None
    selections: dict[str, tuple[dict, Any]] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    thumbs: Thumbnails | None = None
    max_cards: int = 8
    sample: Sample | None = None  # which scored shards `signals` and the selections' rows come from

    @classmethod
    def load(cls, root: str, dataset: str, pipeline=None, max_cards: int = 8,
             sample_rows: int = SAMPLE_ROWS) -> ReportData:
        ds = Dataset(root, dataset)
        sample = choose_sample(ds, sample_rows) if ds.exists() else None
        return cls(root=root, dataset=ds, name=getattr(pipeline, "name", "winnow"), pipeline=pipeline,
                   manifests=find_manifests(root), signals=load_signals(ds, sample) if ds.exists() else None,
                   selections=load_selections(ds, sample) if ds.exists() else {}, results=find_results(root),
                   thumbs=Thumbnails(ds), max_cards=max_cards, sample=sample)

    @property
    def sampled(self) -> bool:
        return self.sample is not None and self.sample.sampled

    def sample_note(self) -> str:
        """A paragraph saying the plots and grids were drawn from a sample ('' when the whole pool was read)."""
        from pipeline.report.html import esc

        return f"<p class='meta'>Plots and sample grids {esc(self.sample.note())}.</p>" if self.sampled else ""

    @property
    def manifest(self) -> dict:
        return self.manifests.get(self.dataset.name, {})

    def sections_of_kind(self, kind: str) -> list[tuple[str, str, dict]]:
        """(dataset, stage, section) for manifest sections of a stage kind, in every dataset."""
        out = []
        for ds_name, m in self.manifests.items():
            for stage, sec in (m.get("stages") or {}).items():
                k = sec.get("kind") or self._kind_from_config(stage)
                if k == kind:
                    out.append((ds_name, stage, sec))
        return out

    def _kind_from_config(self, stage: str) -> str | None:
        if self.pipeline is not None and stage in getattr(self.pipeline, "stages", {}):
            return self.pipeline.stages[stage].kind
        return stage

    def report_url(self) -> str:
        """`<dataset>/report/index.html`; `<root>/report/index.html` while the dataset does not exist yet."""
        return join(self.dataset.url if self.dataset.exists() else self.root, "report", "index.html")
