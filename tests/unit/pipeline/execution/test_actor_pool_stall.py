"""A pipeline that stops sending rows (its actors no longer fit the nodes left, say) does not hold the stage
forever: after `stall_s` without a row the stage keeps the shards it wrote and fails with the command that continues
it. No Ray: the dataset is a stand-in that delivers one shard, then blocks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.layout import Dataset
from pipeline.execution import actor_pool
from pipeline.execution.actor_pool import ReadStep, ShardEnd, read_shards, run_actor_pool
from pipeline.execution.record import StageIncomplete, StageRecord


def read(item: dict):
    n = 3
    yield {"key": np.array([f"{item['shard']}-{i}" for i in range(n)], dtype=object)}
    yield ShardEnd({}, {"key": np.array([""], dtype=object)})


class Stuck:
    """Ray Data's iterator over a pipeline whose actors can no longer be placed: shard 00000's rows, then nothing."""

    def __init__(self, release: threading.Event):
        self.release = release

    def iter_batches(self, **_):
        yield from read_shards({"shard": np.array(["00000"], dtype=object)}, read, {})
        self.release.wait()


def test_a_stalled_pipeline_fails_within_its_deadline_and_keeps_what_it_wrote(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(actor_pool, "build_dataset", lambda *a, **k: Stuck(release))
    ds = Dataset(str(tmp_path), "pool")
    shards = ["00000", "00001", "00002"]
    record = StageRecord("score", ds, shards, folder="signals", quiet=True)
    written = []

    def write(shard: str, cols: dict, info: dict) -> dict:
        written.append((shard, sorted(cols["key"])))
        return {"samples": len(cols["key"]), "ok": len(cols["key"]), "reasons": {}}

    try:
        run_actor_pool(record, [{"shard": s} for s in shards], write, ReadStep(read, {}), retries=2, stall_s=1.0)
    finally:
        release.set()
    assert written == [("00000", ["00000-0", "00000-1", "00000-2"])]
    # one stall ends the stage: no rebuild (the stuck pipeline still holds the cluster; a rebuild would wait behind it)
    assert set(record.failed) == {"00001", "00002"} and record.retries_used == 0
    assert all(why.startswith("stalled: no rows back for 1 s") for why in record.failed.values())
    with pytest.raises(StageIncomplete, match="run the same command again"):
        record.finish()
    assert ds.manifest()["stages"]["score"]["shards"]["failed"] == ["00001", "00002"]
