"""The same images, downloaded from the loopback web or ingested from a DataComp-style copy of them, are the same
samples: the same uids (the JSON's DataComp uid, or the URL's MD5 where a shard has no uid), the same signals, the
same `basic` selection; and the download's selection, exported as a DataComp subset, reproduces itself on the
ingested pool (a published baseline reproduced on a local pool)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ingest_testdata import write_datacomp_shards

from pipeline.cli.export_subset import export_subset
from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.core.sample import image_member, primary_caption, sample_meta
from pipeline.core.shards import read_samples
from pipeline.pipeline_config import load_pipeline_config

WEB = {"pool_size": 30, "hq_size": 0, "test_size": 0,
       "faults": {k: 0.0 for k in ("http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out")}}


def kept(ds: Dataset, recipe: str) -> set[str]:
    return {r["uid"] for r in pq.read_table(ds.sub("selection", f"{recipe}.parquet")).to_pylist() if r["kept"]}


@pytest.fixture(scope="module")
def both(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("same_data")
    root = tmp / "run"
    stages = {
        "download": {"source": "synthetic", "output": "web", "image_size": 64, "resize_mode": "center_crop",
                     "number_sample_per_shard": 16, "thread_count": 8, "timeout": 2},
        "score_web": {"kind": "score", "input": "web"},
        "filter_web": {"kind": "filter", "input": "web", "recipe": "basic"},
        "ingest": {"output": "dc", "source": {"kind": "webdataset", "shards": str(tmp / "datacomp" / "*.tar")}},
        "score_dc": {"kind": "score", "input": "dc"},
        "filter_dc": {"kind": "filter", "input": "dc", "recipe": "basic"},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": str(root), "synthetic": {**WEB, "dir": str(tmp / "web")},
                                    "stages": stages}, sort_keys=False))
    cfg = load_pipeline_config(path)
    for stage in ("download", "score_web", "filter_web"):
        run_pipeline(cfg, stage)
    # The downloaded images as a DataComp pool: other shard sizes and keys, the uid in the JSON (not in the last
    # shard: there the URL's MD5 decides), the captions in .txt, plus one undecodable sample of another URL.
    web = Dataset(str(root), "web")
    samples = []
    for url in web.shard_files():
        for _, files in read_samples(url):
            meta = sample_meta(files)
            samples.append({"image": image_member(files)[1], "caption": primary_caption(files), "url": meta["url"],
                            "uid": meta["uid"]})
    samples.append({"image": b"GIF89a broken", "caption": "a broken picture of a thing", "url": "http://x.test/b.gif",
                    "uid": "0" * 32})
    parts = [samples[i:i + 11] for i in range(0, len(samples), 11)]
    for smp in parts[-1]:
        smp["uid"] = None
    write_datacomp_shards(tmp / "datacomp", parts)
    for stage in ("ingest", "score_dc", "filter_dc"):
        run_pipeline(cfg, stage)
    return cfg, path, web, Dataset(str(root), "dc"), len(samples)


def test_ingested_and_downloaded_copies_of_the_same_images_keep_the_same_uids(both):
    cfg, _, web, dc, n = both
    downloaded = {r["uid"] for url in web.shard_files(ext="parquet") for r in pq.read_table(url).to_pylist()
                  if r["status"] == "success"}
    rows = [r for url in dc.shard_files(ext="parquet") for r in pq.read_table(url).to_pylist()]
    assert len(rows) == n and {r["uid"] for r in rows if r["reason"] != "undecodable_image"} == downloaded
    assert {r["uid_rule"] for r in rows} == {"source_uid", "url_md5"}
    signals = {}
    for ds in (web, dc):
        signals[ds.name] = {r["uid"]: (r["sha256"], r["phash"], r["width"], r["caption"]) for url in
                            ds.shard_files("signals", "parquet") for r in pq.read_table(url).to_pylist()
                            if r["decodable"]}
    assert signals["web"] == signals["dc"]
    assert kept(web, "basic") == kept(dc, "basic") and 0 < len(kept(dc, "basic")) < len(downloaded)


def test_a_published_subset_reproduces_its_selection_on_the_ingested_pool(both, tmp_path):
    cfg, path, web, dc, _ = both
    export_subset(cfg, "filter_web", str(tmp_path / "baseline.npy"), config_path=str(path))
    recipe = tmp_path / "baseline.yaml"
    recipe.write_text(yaml.safe_dump({"description": "a DataComp baseline's subset",
                                      "ops": [{"uids": {"file": "baseline.npy"}}]}))
    again = load_pipeline_config(path, [f"filter_dc.recipe={recipe}"])
    run_pipeline(again, "filter_dc")
    assert kept(dc, "baseline") == kept(web, "basic")
    info = Path(dc.sub("selection", "baseline.json")).read_text()
    assert "uids(keep baseline.npy)" in info
