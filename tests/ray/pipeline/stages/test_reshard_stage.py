"""The reshard stage: exactly the kept uids, balanced shards, readable by webdataset and open_clip's size lookup."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from curation_testdata import add_hostile_members, mark, sample, write_pool

from pipeline.core.layout import Dataset
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.stages import filter as filter_stage
from pipeline.stages import reshard, score
from pipeline.stages.context import StageContext


def ctx_for(root, stages: dict, name: str):
    pc = parse_pipeline_config({"root": str(root), "stages": stages}, "t.yaml")
    return StageContext(pipeline=pc, stage=name), pc.stages[name]


@pytest.fixture(scope="module")
def filtered(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard_stage")
    shards = [[sample(200 + 12 * s + i, caption=("cat" if i % 4 == 0 else None)) for i in range(12)] for s in range(3)]
    ds = write_pool(root, "pool", shards)
    add_hostile_members(ds.shard_file("00001", "tar"))
    mark(ds, "00001", 12)
    score.run(*ctx_for(root, {"score": {"input": "pool"}}, "score"))
    recipe = root / "words.yaml"
    recipe.write_text("description: drop one-word captions\nops:\n  - min_caption_words: 2\n")
    filter_stage.run(*ctx_for(root, {"filter": {"input": "pool", "recipe": str(recipe)}}, "filter"))
    sel = pq.read_table(ds.sub("selection", "words.parquet")).to_pylist()
    kept = {r["uid"] for r in sel if r["kept"]}
    assert len(kept) == 27  # 36 samples, every 4th has a one-word caption
    sha = {r["uid"]: r["sha256"] for p in sorted(Path(ds.path, "signals").glob("*.parquet"))
           for r in pq.read_table(p).to_pylist()}
    return root, kept, sha


def read_output(out: Dataset) -> list[dict]:
    import webdataset as wds

    urls = [out.shard_file(s, "tar") for s in sorted(out.done_shards())]
    return list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt", "json"))


def test_reshard_keeps_exactly_the_kept_uids_in_balanced_readable_shards(filtered):
    root, kept, sha = filtered
    stages = {"reshard": {"input": "pool", "recipe": "words", "output": "train", "samples_per_shard": 10}}
    res = reshard.run(*ctx_for(root, stages, "reshard"))
    out = Dataset(str(root), "train")
    sizes = json.loads(Path(out.path, "shards", "sizes.json").read_text())
    assert sizes == {"00000.tar": 9, "00001.tar": 9, "00002.tar": 9} and res["samples"] == 27
    # byte ranges read from the source tars, output tars and parquets written
    split = json.loads(Path(out.path, "manifest.json").read_text())["stages"]["reshard"]["time_split"]
    assert split["writing"] > 0 and split["reading"] >= 0 and split["decoding"] == split["model"] == 0
    samples = read_output(out)
    uids = [key for key, *_ in samples]
    assert len(uids) == len(set(uids)) == 27 and set(uids) == kept
    for key, img, txt, meta in samples:
        assert img.size == (64, 48) and len(txt.split()) >= 2
        assert meta["uid"] == key and meta["source"]["dataset"] == "pool" and meta["source"]["shard"] in (
            "00000", "00001", "00002")
    # image bytes are the source's bytes, untouched
    import webdataset as wds

    raw = {s["__key__"]: s["jpg"] for s in wds.WebDataset(
        [out.shard_file(s, "tar") for s in sorted(out.done_shards())], shardshuffle=False)}
    assert all(hashlib.sha256(b).hexdigest() == sha[u] for u, b in raw.items())
    rows = pq.read_table(out.shard_file("00000", "parquet")).to_pylist()
    assert [r["uid"] for r in rows] == [k for k, *_ in samples[:9]] and rows[0]["source_key"]

    from open_clip_train.data import get_dataset_size

    assert get_dataset_size(out.sub("shards", "{00000..00002}.tar")) == (27, 3)

    # shuffled: not in uid order, and the order is a function of the seed
    assert uids != sorted(uids)
    before = {p: p.stat().st_mtime_ns for p in Path(out.path, "shards").glob("*.tar")}
    res = reshard.run(*ctx_for(root, stages, "reshard"))
    assert res["shards"]["skipped_already_done"] == 3
    assert {p: p.stat().st_mtime_ns for p in Path(out.path, "shards").glob("*.tar")} == before


def test_a_new_plan_rebuilds_the_output_and_removes_extra_shards(filtered):
    root, kept, _ = filtered
    first = {"reshard": {"input": "pool", "recipe": "words", "output": "train2", "samples_per_shard": 5}}
    reshard.run(*ctx_for(root, first, "reshard"))
    out = Dataset(str(root), "train2")
    assert len(out.done_shards()) == 6
    order_a = [k for k, *_ in read_output(out)]
    second = {"reshard": {"input": "pool", "recipe": "words", "output": "train2", "samples_per_shard": 13,
                          "seed": 1}}
    res = reshard.run(*ctx_for(root, second, "reshard"))
    assert res["shards"]["skipped_already_done"] == 0
    assert sorted(out.done_shards()) == ["00000", "00001", "00002"]
    assert sorted(p.name for p in Path(out.path, "shards").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    order_b = [k for k, *_ in read_output(out)]
    assert sorted(order_b) == sorted(order_a) == sorted(kept) and order_b != order_a
    assert json.loads(Path(out.path, "shards", "sizes.json").read_text()) == {
        "00000.tar": 9, "00001.tar": 9, "00002.tar": 9}


@dataclass
class FailsOnce:
    """Indexes a source tar like `index_samples`, but the first attempt on `shard` raises (runs in a Ray task)."""

    attempts_dir: str
    shard: str

    def __call__(self, url: str, keys: set[str]) -> dict:
        from pipeline.core.shards import index_samples

        name = Path(url).stem
        Path(self.attempts_dir, f"{name}-{len(list(Path(self.attempts_dir).glob(name + '-*')))}").touch()
        if name == self.shard and not Path(self.attempts_dir, f"{name}-1").exists():
            raise OSError(f"source {name} unreadable for a moment")
        return index_samples(url, keys)


def test_a_source_index_task_that_fails_once_is_retried(filtered, monkeypatch, tmp_path):
    from pipeline.core import shards

    root, kept, _ = filtered
    monkeypatch.setattr(shards, "index_samples", FailsOnce(str(tmp_path), "00001"))
    stages = {"reshard": {"input": "pool", "recipe": "words", "output": "train3", "samples_per_shard": 10}}
    res = reshard.run(*ctx_for(root, stages, "reshard"))
    tries = sorted(p.name for p in tmp_path.iterdir())
    assert tries == ["00000-0", "00001-0", "00001-1", "00002-0"]  # each source indexed once, 00001 twice
    assert res["shards"]["done"] == 3 and res["shards"]["failed"] == [] and res["samples"] == 27
    assert {k for k, *_ in read_output(Dataset(str(root), "train3"))} == kept


def test_missing_selection_is_a_clear_error(filtered):
    root, _, _ = filtered
    with pytest.raises(Exception, match="no selection/basic.parquet; run a filter stage with recipe 'basic'"):
        reshard.run(*ctx_for(root, {"reshard": {"input": "pool", "recipe": "basic"}}, "reshard"))


def test_score_filter_reshard_through_run_pipeline_then_report(ray_local, tmp_path):
    from pipeline.cli.run import run_pipeline

    shards = [[sample(400 + 10 * s + i, caption=("IMG_1234.jpg" if i == 3 else None)) for i in range(10)]
              for s in range(2)]
    write_pool(tmp_path, "pool", shards)
    stages = {"score": {"input": "pool"}, "filter": {"input": "pool", "recipe": "basic"},
              "reshard": {"input": "pool", "recipe": "basic", "samples_per_shard": 6}}
    pc = parse_pipeline_config({"name": "chain", "root": str(tmp_path), "stages": stages}, "chain.yaml")
    res = run_pipeline(pc, config_path="chain.yaml")
    assert res["filter"]["kept"] == 18 and res["reshard"]["samples"] == 18
    out = Dataset(str(tmp_path), "pool-basic")  # the default output name: <input>-<recipe>
    assert sum(json.loads(Path(out.path, "shards", "sizes.json").read_text()).values()) == 18
    assert len(read_output(out)) == 18
    report = Path(tmp_path, "pool", "report", "index.html").read_text()
    assert "Recipe: basic" in report and "data:image/jpeg;base64," in report and "pool-basic" in report


def test_capfilt_keeps_judged_captions_whose_provenance_survives_reshard(ray_local, tmp_path, capfilt_models):
    """score -> caption -> filter (capfilt: the best half of all candidate captions) -> reshard -> report: every
    kept caption is in the sample with its source, score and judge; `.txt` is the best; an image with no kept
    caption is gone; training draws among the kept captions only."""
    import random

    from capfilt_testdata import stage_cfg

    from pipeline.cli.run import run_pipeline
    from pipeline.core.sample import pick_caption

    write_pool(tmp_path, "pool", [[sample(900 + 8 * s + i) for i in range(8)] for s in range(2)])
    recipe = tmp_path / "half.yaml"
    recipe.write_text("description: the best half of the captions\nops:\n  - capfilt: {top_fraction: 0.5}\n")
    cap = stage_cfg(capfilt_models, decoding={"strategy": "beam", "num_beams": 2, "num_captions": 2,
                                              "max_length": 4, "min_length": 4})
    stages = {"score": {"input": "pool"}, "caption": cap, "filter": {"input": "pool", "recipe": str(recipe)},
              "reshard": {"input": "pool", "recipe": str(recipe), "output": "capfilt", "samples_per_shard": 5}}
    pc = parse_pipeline_config({"name": "capfilt", "root": str(tmp_path), "stages": stages}, "c.yaml")
    res = run_pipeline(pc, config_path="c.yaml")
    sel = {r["uid"]: r for r in pq.read_table(Path(tmp_path, "pool", "selection", "half.parquet")).to_pylist()}
    assert all(len(r["captions"]) == 3 for r in sel.values())  # the web caption + 2 beams, each judged
    kept = {u for u, r in sel.items() if r["kept"]}
    assert kept == {u for u, r in sel.items() if any(c["kept"] for c in r["captions"])} and 0 < len(kept) < 16
    assert sum(c["kept"] for r in sel.values() for c in r["captions"]) == 24  # floor(0.5 x 48) (no score ties)
    assert res["filter"]["kept"] == len(kept) == res["reshard"]["samples"]
    out = read_output(Dataset(str(tmp_path), "capfilt"))
    assert {key for key, *_ in out} == kept
    judge = json.loads(Path(tmp_path, "pool", "manifest.json").read_text())["stages"]["caption"]["caption_filter_id"]
    sources = set()
    for key, _, txt, meta in out:
        want = [c for c in sel[key]["captions"] if c["kept"]]
        assert meta["captions"] == [c["text"] for c in want] and txt == want[0]["text"]
        for got, c in zip(meta["caption_provenance"], want, strict=True):
            assert got["source"] == c["source"] and got["score"] == pytest.approx(c["score"]) and got["judge"] == judge
            sources.add(got["source"])
        drawn = {pick_caption({"json": json.dumps(meta).encode()}, random.Random(i)) for i in range(60)}
        assert drawn == set(meta["captions"])  # one kept caption per read, each of them over many reads
    assert sources == {"web", "synthetic"}
    report = Path(tmp_path, "pool", "report", "index.html").read_text()
    assert "CapFilt: half" in report and "judged" in report and "synthetic" in report
