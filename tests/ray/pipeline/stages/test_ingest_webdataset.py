"""Ingesting DataComp-style webdataset shards: read in place (no image byte written), every sample counted under a
reason, the source's metadata kept; then score -> filter -> reshard -> train-clip read the pool as a download; a
selection exported as a DataComp subset and imported by a recipe is the same selection; a changed source is
reported and re-ingested; the same on an S3 root."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ingest_testdata import write_datacomp_shards
from PIL import Image

from pipeline.__main__ import main
from pipeline.cli.run import run_pipeline
from pipeline.cli.status import status_rows
from pipeline.core.errors import DamagedShards
from pipeline.core.ids import uid_of
from pipeline.core.layout import Dataset, fs_and_path, join
from pipeline.core.shards import read_samples
from pipeline.core.storage import upload
from pipeline.pipeline_config import load_pipeline_config
from pipeline.report import build_report
from pipeline.stages.context import StageContext
from pipeline.stages.train_clip import input_shards

PER_SHARD = 12
TRAIN = {"kind": "train-clip", "input": "curated", "output": "encoder", "model": {"name": "tiny-clip-vit"},
         "objective": "clip", "steps": 4, "log_every": 2, "checkpoint_every": 4,
         "data": {"batch_size": 4, "loader_workers": 0}, "scaling": {"num_workers": 0}}


def noise_jpeg(i: int, side: int = 128) -> bytes:
    """A photo-sized JPEG (~20 KB): noise does not compress, so a tar of them weighs what real shards weigh."""
    pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def datacomp_samples() -> list[list[dict]]:
    """Two shards: the first with DataComp uids in the JSON, the second with URLs only (one sample with neither);
    an undecodable image, a sample without caption, a one-word caption (kept by ingest, dropped by `basic`)."""
    shards = []
    for s in range(2):
        part = []
        for i in range(PER_SHARD):
            n = 100 * s + i
            url = f"http://pool.test/img/{n}.jpg"
            part.append({"image": noise_jpeg(n), "caption": f"a photo of thing number {n} on a table", "url": url,
                         "uid": uid_of(url) if s == 0 else None})
        shards.append(part)
    shards[0][3]["image"] = b"\x89PNG\r\n\x1a\n but not really"  # undecodable
    shards[0][5]["caption"] = None  # missing caption
    shards[0][7]["caption"] = "cat"  # one word
    shards[1][4]["url"] = None  # no uid, no url: the image's hash
    return shards


def expected_uids(shards: list[list[dict]]) -> list[str]:
    return [smp["uid"] or (uid_of(smp["url"]) if smp["url"] else hashlib.sha256(smp["image"]).hexdigest()[:32])
            for part in shards for smp in part]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, list[list[dict]]]:
    folder = tmp_path_factory.mktemp("datacomp") / "pool"
    shards = datacomp_samples()
    write_datacomp_shards(folder, shards, link_in=1)  # shard 1's first image is a symlink member
    return folder, shards


def write_config(tmp: Path, root: str, shards: str, **ingest) -> Path:
    stages = {"ingest": {"output": "pool", "source": {"kind": "webdataset", "shards": shards}, **ingest},
              "score": {"input": "pool"}, "filter": {"input": "pool", "recipe": "basic"},
              "reshard": {"input": "pool", "recipe": "basic", "output": "curated", "samples_per_shard": 8},
              "train": TRAIN}
    path = tmp / f"cfg-{abs(hash(root))}.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "root": root, "ray": {"num_cpus": 2}, "stages": stages},
                                   sort_keys=False))
    return path


def sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def in_place(ray_local, source, tmp_path_factory):
    folder, shards = source
    tmp = tmp_path_factory.mktemp("in_place")
    cfg_path = write_config(tmp, str(tmp / "run"), str(folder / "{00000000..00000001}.tar"))
    cfg = load_pipeline_config(cfg_path)
    return cfg, cfg_path, run_pipeline(cfg, "ingest")["ingest"]


def test_in_place_ingest_counts_every_sample_keeps_metadata_and_copies_no_image_byte(source, in_place):
    folder, shards = source
    cfg, _, res = in_place
    ds = Dataset(cfg.root, "pool")
    assert res["samples"] == 2 * PER_SHARD == res["ok"] + sum(res["reasons"].values())
    assert res["reasons"] == {"undecodable_image": 1, "missing_caption": 1, "missing_image": 1}
    assert res["members_skipped"] == {"link_member": 1} and res["read_errors"] == {}
    assert res["uid_rules"] == {"source_uid": PER_SHARD, "url_md5": PER_SHARD - 1, "image_sha256": 1}
    rows = [r for url in ds.shard_files(ext="parquet") for r in pq.read_table(url).to_pylist()]
    assert [r["uid"] for r in rows] == expected_uids(shards)
    by_key = {r["key"]: r for r in rows}
    assert by_key["000000000003"]["reason"] == "undecodable_image" and by_key["000000010000"]["reason"] == \
        "missing_image"
    # the JSON's fields and the source parquet's columns are metadata; its failed download is not a sample
    first = by_key["000000000000"]
    assert first["clip_b32_similarity_score"] == 0.25 and first["original_width"] == 640
    assert first["text"] == first["caption"] and first["face_bboxes"] == "[[0.1, 0.1, 0.2, 0.2]]"
    assert first["source_status"] == "success" and first["status"] == "success"
    # read in place: the tars are the source's; the pool holds parquet, markers and the manifest only
    assert ds.shard_source("00001") == str(folder / "00000001.tar")
    assert not list(Path(ds.path).rglob("*.tar"))
    assert sizes(Path(ds.path)) < 0.05 * sizes(folder), (sizes(Path(ds.path)), sizes(folder))


def test_a_rerun_does_no_work(in_place):
    cfg, _, _ = in_place
    shards = Path(Dataset(cfg.root, "pool").path, "shards")
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()}
    again = run_pipeline(cfg, "ingest")["ingest"]
    assert again["shards"]["skipped_already_done"] == again["shards"]["total"] == 2
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()} == before


def test_a_copy_holds_exactly_what_is_read_in_place(source, in_place):
    folder, _ = source
    cfg, _, _ = in_place
    cfg = load_pipeline_config(write_config(Path(cfg.root).parent, cfg.root, str(folder / "*.tar"), copy=True,
                                            output="copied"))
    res = run_pipeline(cfg, "ingest")["ingest"]
    pool, copied = Dataset(cfg.root, "pool"), Dataset(cfg.root, "copied")
    assert res["reasons"] == {"undecodable_image": 1, "missing_caption": 1, "missing_image": 1}
    for shard in ("00000", "00001"):
        assert copied.shard_source(shard) == copied.shard_file(shard, "tar")
        assert pq.read_table(copied.shard_file(shard, "parquet")).equals(pq.read_table(pool.shard_file(shard,
                                                                                                         "parquet")))
        assert list(read_samples(copied.shard_source(shard))) == list(read_samples(pool.shard_source(shard)))


def test_the_pool_runs_through_score_filter_reshard_and_train_and_a_subset_reproduces_the_selection(
        source, in_place, tmp_path):
    _, shards = source
    cfg, cfg_path, _ = in_place
    res = run_pipeline(cfg)
    kept = {r["uid"] for r in pq.read_table(Dataset(cfg.root, "pool").sub("selection", "basic.parquet")).to_pylist()
            if r["kept"]}
    bad = {expected_uids(shards)[i] for i in (3, 5, 7, PER_SHARD)}  # undecodable, no caption, one word, link
    assert kept == set(expected_uids(shards)) - bad and res["filter"]["kept"] == len(kept)
    curated = Dataset(cfg.root, "curated")
    written = {key: files["jpg"] for url in curated.shard_files() for key, files in read_samples(url)}
    source_bytes = {uid: smp["image"] for uid, smp in zip(expected_uids(shards), [s for p in shards for s in p],
                                                         strict=True)}
    assert set(written) == kept and all(written[u] == source_bytes[u] for u in kept)
    assert res["train"]["step"] == 4 and res["train"]["samples_seen"] == 16

    # the selection as a DataComp subset, read back by a recipe, is the same selection
    subset = tmp_path / "basic.npy"
    assert main(["export-subset", str(cfg_path), "--stage", "filter", "--out", str(subset)]) == 0
    arr = np.load(subset)
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == len(kept) and (np.sort(arr) == arr).all()
    recipe = tmp_path / "from_subset.yaml"
    recipe.write_text(yaml.safe_dump({"ops": [{"uids": {"file": "basic.npy", "keep": True}}]}))
    again = load_pipeline_config(write_config(tmp_path, cfg.root, "x"), ["filter.recipe=" + str(recipe)])
    assert run_pipeline(again, "filter")["filter"]["kept"] == len(kept)
    sel = pq.read_table(Dataset(cfg.root, "pool").sub("selection", "from_subset.parquet")).to_pylist()
    assert {r["uid"] for r in sel if r["kept"]} == kept

    # status and the report know the ingest stage
    status = {r[0]: r for r in status_rows(cfg)}
    assert status["ingest"][1:6] == ["ingest", "pool", "complete", "2/2", 2 * PER_SHARD]
    html = Path(build_report(cfg)).read_text()
    assert "Ingested data" in html and "read in place" in html and "link_member" in html
    assert "could not be built" not in html


def test_a_changed_source_stops_its_readers_and_is_ingested_again_and_a_gone_one_leaves(source, tmp_path, ray_local):
    folder, shards = source
    src = tmp_path / "pool"
    shutil.copytree(folder, src)
    cfg = load_pipeline_config(write_config(tmp_path, str(tmp_path / "run"), str(src / "*.tar")))
    run_pipeline(cfg, "ingest")
    changed = datacomp_samples()
    changed[1] = changed[1][:-1]  # the provider rewrote shard 1 with a sample less
    write_datacomp_shards(tmp_path / "new", changed, link_in=1)
    shutil.copy(tmp_path / "new" / "00000001.tar", src / "00000001.tar")
    os.utime(src / "00000001.tar", (time.time() + 10, time.time() + 10))
    ctx = StageContext(pipeline=cfg, stage="train")
    train_on_pool = cfg.stages["train"].model_copy(update={"input": "pool"})
    with pytest.raises(DamagedShards, match=r"(?s)00000001.tar: source changed since it was ingested.*"
                                            r"--stage ingest"):
        input_shards(ctx, train_on_pool)
    res = run_pipeline(cfg, "ingest")["ingest"]
    assert res["changed_sources_reingested"] == ["00001"] and res["shards"]["skipped_already_done"] == 1
    assert res["samples"] == 2 * PER_SHARD - 1
    assert input_shards(ctx, train_on_pool) == [str(src / "00000000.tar"), str(src / "00000001.tar")]
    # a shard the source no longer has leaves the dataset
    (src / "00000001.tar").unlink()
    res = run_pipeline(cfg, "ingest")["ingest"]
    pool = Dataset(cfg.root, "pool")
    assert res["samples"] == PER_SHARD and list(pool.done_shards()) == ["00000"]
    assert not Path(pool.shard_file("00001", "parquet")).exists()


def test_an_s3_source_read_in_place_under_an_s3_root(source, in_place, s3_bucket, tmp_path):
    folder, _ = source
    cfg_local, _, local = in_place
    upload(str(folder), join(s3_bucket, "datacomp"))
    root = join(s3_bucket, "run")
    cfg = load_pipeline_config(write_config(tmp_path, root, join(s3_bucket, "datacomp", "{00000000..00000001}.tar")))
    res = run_pipeline(cfg, "ingest")
    res.update(run_pipeline(cfg, "score"))
    res.update(run_pipeline(cfg, "filter"))
    ing = res["ingest"]
    assert {k: ing[k] for k in ("samples", "ok", "reasons", "uid_rules", "members_skipped")} == \
        {k: local[k] for k in ("samples", "ok", "reasons", "uid_rules", "members_skipped")}
    pool = Dataset(root, "pool")
    assert pool.shard_source("00000") == join(s3_bucket, "datacomp", "00000000.tar")
    fs, path = fs_and_path(pool.url)
    assert not [p for p in fs.find(path) if p.endswith(".tar")]
    kept = {}
    for name, c in (("s3", cfg), ("local", cfg_local)):
        ds = Dataset(c.root, "pool")
        sel_fs, sel = fs_and_path(ds.sub("selection", "basic.parquet"))
        if not sel_fs.exists(sel):  # this test ran alone
            run_pipeline(c, "score")
            run_pipeline(c, "filter")
        with sel_fs.open(sel, "rb") as f:
            kept[name] = {r["uid"] for r in pq.read_table(f).to_pylist() if r["kept"]}
    assert kept["s3"] == kept["local"] and len(kept["s3"]) == 2 * PER_SHARD - 4
    run_pipeline(cfg, "reshard")  # byte ranges of the in-place tars, read from the bucket
    assert {key for url in Dataset(root, "curated").shard_files() for key, _ in read_samples(url)} == kept["s3"]
