"""Ingesting an image folder with a COCO captions JSON and a parquet file with image bytes (a `datasets` export):
written as winnow shards, every image counted under a reason (an undecodable file, a missing caption, a symlink
refused), every caption of an image kept as a candidate; then score -> filter -> reshard -> train-clip."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from curation_testdata import png, sample, smooth_image
from ingest_testdata import write_coco_folder, write_image_parquet

from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.core.sample import captions, sample_meta
from pipeline.core.shards import read_samples
from pipeline.pipeline_config import load_pipeline_config

TRAIN = {"kind": "train-clip", "model": {"name": "tiny-clip-vit"}, "objective": "clip", "steps": 3, "log_every": 1,
         "checkpoint_every": 3, "data": {"batch_size": 4, "loader_workers": 0}, "scaling": {"num_workers": 0}}


def caption(i: int, variant: int = 0) -> str:
    return [f"a photo of object number {i} on a table", f"object {i} seen from above on wood"][variant]


@pytest.fixture(scope="module")
def ingested(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder_parquet")
    images = {f"{i:012d}.jpg": sample(300 + i).image for i in range(9)}
    images["000000000009.png"] = png(smooth_image(309))
    images["000000000003.jpg"] = b"\xff\xd8\xff truncated"  # undecodable
    caps = {name: [caption(i), caption(i, 1)] for i, name in enumerate(sorted(images))}
    caps["000000000005.jpg"] = []  # no caption
    coco = write_coco_folder(tmp / "coco", images, caps)
    os.symlink(tmp / "coco" / "train" / "000000000000.jpg", tmp / "coco" / "train" / "000000000010.jpg")
    rows = [{"image": sample(400 + i).image, "caption": caption(400 + i), "name": f"{i}.jpg", "label": i % 3}
            for i in range(9)]
    rows[4]["image"] = None  # no image bytes
    for r in rows[5:]:  # the second file's captions are lists of candidates
        r["caption"] = [r["caption"]]
    rows[6]["caption"].append(caption(406, 1))
    write_image_parquet(tmp / "hf" / "train-00000-of-00002.parquet", rows[:5])
    write_image_parquet(tmp / "hf" / "train-00001-of-00002.parquet", rows[5:])
    folder = {"kind": "folder", "path": str(tmp / "coco" / "train"), "captions": str(coco)}
    stages = {"ingest_coco": {"kind": "ingest", "output": "coco", "source": folder},
              "ingest_hf": {"kind": "ingest", "output": "hf", "samples_per_shard": 5,
                            "source": {"kind": "parquet", "files": str(tmp / "hf" / "*.parquet")}}}
    for name in ("coco", "hf"):
        stages |= {f"score_{name}": {"kind": "score", "input": name},
                   f"filter_{name}": {"kind": "filter", "input": name, "recipe": "basic"},
                   f"reshard_{name}": {"kind": "reshard", "input": name, "recipe": "basic", "output": f"{name}_kept",
                                       "samples_per_shard": 4},
                   f"train_{name}": {**TRAIN, "input": f"{name}_kept", "output": f"encoder_{name}"}}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": str(tmp / "run"), "stages": stages}, sort_keys=False))
    cfg = load_pipeline_config(path)
    return cfg, images, rows, run_pipeline(cfg)


def test_a_coco_folder_is_written_as_shards_with_every_caption_and_every_image_counted(ingested):
    cfg, images, _, res = ingested
    ing = res["ingest_coco"]
    assert ing["samples"] == 11 == ing["ok"] + sum(ing["reasons"].values())
    assert ing["reasons"] == {"undecodable_image": 1, "missing_caption": 1, "missing_image": 1}
    assert ing["members_skipped"] == {"link_member": 1}
    assert ing["uid_rules"] == {"image_sha256": 10, "shard_key": 1}
    ds = Dataset(cfg.root, "coco")
    assert ds.manifest()["stages"]["ingest_coco"]["mode"] == "written"
    rows = {r["file_name"]: r for r in pq.read_table(ds.shard_file("00000", "parquet")).to_pylist()}
    assert rows["000000000001.jpg"]["uid"] == hashlib.sha256(images["000000000001.jpg"]).hexdigest()[:32]
    assert rows["000000000001.jpg"]["captions"] == 2 and rows["000000000001.jpg"]["license"] == 3
    assert rows["000000000010.jpg"]["reason"] == "missing_image"
    samples = {sample_meta(f)["file_name"]: f for _, f in read_samples(ds.shard_source("00000"))}
    assert captions(samples["000000000002.jpg"]) == [caption(2), caption(2, 1)]
    assert samples["000000000009.png"]["png"] == images["000000000009.png"]


def test_a_parquet_export_is_written_as_shards_by_row_ranges(ingested):
    cfg, _, rows, res = ingested
    ing = res["ingest_hf"]
    assert ing["shards"]["total"] == 2 and ing["samples"] == 9 == ing["ok"] + sum(ing["reasons"].values())
    assert ing["reasons"] == {"missing_image": 1} and ing["uid_rules"] == {"image_sha256": 8, "shard_key": 1}
    ds = Dataset(cfg.root, "hf")
    meta = [sample_meta(f) for url in ds.shard_files() for _, f in read_samples(url)]
    assert [(m["source_file"][6:11], m["source_row"]) for m in meta] == \
        [("00000", i) for i in range(5)] + [("00001", i) for i in range(4)]
    assert [m["label"] for m in meta] == [i % 3 for i in range(9)]
    assert meta[6]["captions"] == rows[6]["caption"] and meta[5]["caption"] == rows[5]["caption"][0]


@pytest.mark.parametrize("name, bad", [("coco", 3), ("hf", 1)])
def test_each_ingested_pool_runs_through_score_filter_reshard_and_train(ingested, name, bad):
    cfg, _, _, res = ingested
    ing, kept = res[f"ingest_{name}"], res[f"filter_{name}"]["kept"]
    assert kept == ing["samples"] - bad  # basic drops exactly what ingest flagged (nothing else is wrong here)
    curated = Dataset(cfg.root, f"{name}_kept")
    written = [f for url in curated.shard_files() for _, f in read_samples(url)]
    assert len(written) == kept == res[f"reshard_{name}"]["samples"]
    if name == "coco":  # every caption of an image travels with it, for training to draw one per step
        assert sum(len(captions(f)) == 2 for f in written) == kept
    assert res[f"train_{name}"]["step"] == 3 and res[f"train_{name}"]["samples_seen"] == 12
    assert json.loads(Path(cfg.root, f"encoder_{name}", "train.json").read_text())["input"]["shards"] == \
        len(curated.done_shards())
