"""The actor-pool runner is generic: a stand-in model (each image's mean brightness) with its own read function and
writer, over a few shards. Every uid is written exactly once, the record's counts add up, a failing actor batch is
retried, and a run that still fails is finished by a rerun that redoes only the missing shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_testdata import Sample, sample, write_pool

from pipeline.core.layout import Dataset, atomic_write, file_record, fs_and_path
from pipeline.execution.actor_pool import ModelStep, ReadStep, ShardEnd, run_actor_pool
from pipeline.execution.record import StageIncomplete, StageRecord

SIDE = 8  # images are read as SIDE x SIDE RGB arrays


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    return {"uid": np.array([r[0] for r in rows], dtype=object), "key": np.array([r[1] for r in rows], dtype=object),
            "decodable": np.array([r[2] for r in rows], dtype=bool),
            "pixels": np.stack([r[3] for r in rows]).astype(np.uint8)}  # (B, SIDE, SIDE, 3)


def read_images(item: dict, chunk_rows: int):
    """Read function: a shard's images as small arrays, in chunks, then its end."""
    from pipeline.core.images import decode_image
    from pipeline.core.shards import read_samples

    blank = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    rows = []
    for key, members in read_samples(item["url"]):
        _, img = decode_image(members.get("jpg"))
        pixels = np.asarray(img.resize((SIDE, SIDE))) if img is not None else blank
        rows.append((json.loads(members["json"])["uid"], key, img is not None, pixels))
        if len(rows) == chunk_rows:
            yield _columns(rows)
            rows = []
    if rows:
        yield _columns(rows)
    yield ShardEnd({"url": item["url"]}, _columns([("", "", False, blank)]))


class Brightness:
    """Stand-in model: mean brightness in [0, 1] of each decodable image. With `fail_on`, a batch holding that uid
    raises: once (after which `fail_once_file` exists) or, without the file, every time."""

    def __init__(self, fail_on: str | None = None, fail_once_file: str | None = None):
        self.fail_on, self.fail_once_file = fail_on, fail_once_file

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_on is not None and self.fail_on in set(batch["uid"]):
            if self.fail_once_file is None or not os.path.exists(self.fail_once_file):
                if self.fail_once_file:
                    Path(self.fail_once_file).touch()
                raise RuntimeError(f"injected failure on {self.fail_on}")
        pixels = batch.pop("pixels")
        mean = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
        batch["brightness"] = np.where(batch["decodable"], mean, np.nan).astype(np.float32)
        return batch


def brightness_writer(ds: Dataset):
    """Writer: brightness/<shard>.parquet (uid, key, brightness), sorted by key."""
    def write(shard: str, cols: dict, info: dict) -> dict:
        order = np.argsort(cols["key"].astype(str))
        table = pa.table({"uid": pa.array(cols["uid"][order].tolist(), pa.string()),
                          "key": pa.array(cols["key"][order].tolist(), pa.string()),
                          "brightness": pa.array(cols["brightness"][order], pa.float32())})
        url = ds.shard_file(shard, "parquet", "brightness")
        with atomic_write(url, "wb") as f:
            pq.write_table(table, f)
        ok = int(cols["decodable"].sum())
        reasons = {"undecodable": len(order) - ok} if len(order) > ok else {}
        return {"samples": len(order), "ok": ok, "reasons": reasons,
                "files": {f"brightness/{shard}.parquet": file_record(*fs_and_path(url))}, "read": info}
    return write


def pool(root: Path) -> tuple[Dataset, list[list[Sample]]]:
    shards = [[sample(300 + 10 * s + i) for i in range(7)] for s in range(4)]
    shards[1].append(Sample(b"not an image", "a broken one", "http://web.test/broken-b.jpg"))
    shards.append([])  # an empty shard still gets its (empty) file and marker
    return write_pool(root, "pool", shards), shards


def run(ds: Dataset, model: dict, retries: int) -> tuple[StageRecord, dict]:
    """The runner over the shards not yet done, with Brightness(**model) actors; (record, output mtimes)."""
    record = StageRecord("brightness", ds, sorted(ds.done_shards()), folder="brightness", quiet=True)
    todo = record.pending()
    read = ReadStep(read_images, {"chunk_rows": 3}, num_cpus=1, memory_mb=64)
    actor = ModelStep(Brightness, model, actors=1, num_cpus=1, batch_size=4)
    run_actor_pool(record, [{"shard": s, "url": ds.shard_file(s, "tar")} for s in todo], brightness_writer(ds),
                   read, actor, retries=retries)
    return record, {s: os.stat(ds.shard_file(s, "parquet", "brightness")).st_mtime_ns
                    for s in ds.done_shards("brightness")}


def written(ds: Dataset) -> dict[str, list]:
    tables = [pq.read_table(ds.shard_file(s, "parquet", "brightness")) for s in sorted(ds.done_shards("brightness"))]
    return {c: [v for t in tables for v in t.column(c).to_pylist()] for c in ("uid", "brightness")}


def expected_brightness(ds: Dataset) -> dict[str, float]:
    """The stand-in model run in-process on the same reads: what the runner must reproduce."""
    out = {}
    for s in sorted(ds.done_shards()):
        for chunk in read_images({"shard": s, "url": ds.shard_file(s, "tar")}, chunk_rows=100):
            if isinstance(chunk, dict):
                scored = Brightness()(chunk)
                out.update(zip(scored["uid"], scored["brightness"].tolist(), strict=True))
    return out


def test_stand_in_model_writes_every_uid_once_and_retries_a_failing_batch(ray_local, tmp_path: Path) -> None:
    ds, shards = pool(tmp_path)
    victim = shards[2][4].uid
    record, _ = run(ds, {"fail_on": victim, "fail_once_file": str(tmp_path / "failed-once")}, retries=2)
    assert (tmp_path / "failed-once").exists()  # the injected failure happened
    assert record.retries_used >= 1 and record.failed == {}
    summary = record.finish()

    got = written(ds)
    uids = [s.uid for sh in shards for s in sh]
    assert len(got["uid"]) == len(set(got["uid"])) == len(uids) == 29 and set(got["uid"]) == set(uids)
    want = expected_brightness(ds)
    for uid, value in zip(got["uid"], got["brightness"], strict=True):
        assert value == pytest.approx(want[uid], abs=1e-6, nan_ok=True)

    assert (summary.shards_total, summary.shards_done, summary.shards_skipped) == (5, 5, 0)
    assert (summary.samples, summary.ok, summary.reasons) == (29, 28, {"undecodable": 1})
    markers = ds.done_shards("brightness")
    assert [markers[s]["samples"] for s in sorted(markers)] == [7, 8, 7, 7, 0]
    section = ds.manifest()["stages"]["brightness"]
    assert section["shards"]["retries_used"] == record.retries_used and section["shard_failures"] == {}
    assert section["checksums"] == {s: {f: v["sha256"] for f, v in m["files"].items()} for s, m in markers.items()}
    assert section["startup_seconds"] is not None and section["run_samples_per_s"] > 0
    assert markers["00004"]["read"] == {"url": ds.shard_file("00004", "tar")}


def test_a_failed_run_keeps_its_shards_and_a_rerun_writes_only_the_rest(ray_local, tmp_path: Path) -> None:
    ds, shards = pool(tmp_path)
    victim = shards[3][0].uid
    record, _ = run(ds, {"fail_on": victim}, retries=0)  # fails every time: no retry left
    with pytest.raises(StageIncomplete, match=r"brightness: \d of 5 shards failed after 0 retries .*injected failure"):
        record.finish()
    done_before = set(ds.done_shards("brightness"))
    assert "00003" not in done_before and set(record.failed) == {f"{i:05d}" for i in range(5)} - done_before
    assert ds.manifest()["stages"]["brightness"]["shards"]["failed"] == sorted(record.failed)
    mtimes = {s: os.stat(ds.shard_file(s, "parquet", "brightness")).st_mtime_ns for s in done_before}

    record, after = run(ds, {}, retries=0)
    summary = record.finish()
    assert summary.shards_skipped == len(done_before) and summary.shards_done == 5 and summary.samples == 29
    assert record.processed == sum(len(shards[int(s)]) for s in set(after) - done_before)
    assert {s: after[s] for s in done_before} == mtimes  # done shards are not rewritten
    got = written(ds)["uid"]
    assert len(got) == len(set(got)) == 29 and set(got) == {s.uid for sh in shards for s in sh}
