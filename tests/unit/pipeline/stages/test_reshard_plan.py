"""The reshard plan, columnar: the kept uids sorted, shuffled by seed, split into shards whose sizes differ by at most
one; its digest is the per-uid one (so outputs planned before stay valid), and the plan reads no tar."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.layout import Dataset
from pipeline.stages.reshard import ReshardConfig, plan_hash, plan_output, read_kept


def write_selection(root, n: int = 2500, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ds = Dataset(str(root), "pool")
    kept = rng.random(n) < 0.4
    table = pa.table({"uid": [f"{v:032x}" for v in rng.permutation(n) * 7919], "shard": [f"{i // 500:05d}"
                                                                                        for i in range(n)],
                      "key": [f"{i:09d}" for i in range(n)], "kept": kept})
    path = root / "pool" / "selection"
    path.mkdir(parents=True)
    pq.write_table(table, path / "r.parquet")
    return ds


def per_uid_hash(parts: list[list[tuple]]) -> str:
    """The plan digest as it was first defined: one update per uid."""
    h = hashlib.sha256()
    for i, part in enumerate(parts):
        h.update(f"#{i}:".encode())
        for uid, _, _ in part:
            h.update(uid.encode())
    return h.hexdigest()[:16]


def test_plan_is_sorted_shuffled_balanced_and_hashed_as_before(tmp_path):
    ds = write_selection(tmp_path)
    cfg = ReshardConfig(input="pool", recipe="r", samples_per_shard=300, seed=3)
    plan, captions, plan_id, sizes = plan_output(ds, cfg)
    table = pq.read_table(tmp_path / "pool" / "selection" / "r.parquet").to_pylist()
    want = sorted((r["uid"], r["shard"], r["key"]) for r in table if r["kept"])
    kept, _ = read_kept(ds, "r")
    assert list(zip(*(kept.column(c).to_pylist() for c in ("uid", "shard", "key")), strict=True)) == want
    order = np.random.default_rng(3).permutation(len(want))
    parts = [[want[i] for i in part] for part in np.array_split(order, math.ceil(len(want) / 300))]
    assert [plan.part(i) for i in range(len(plan))] == parts  # the plan of the tuple-list version
    assert plan_id == per_uid_hash(parts) == plan_hash(plan)
    assert captions is None and max(sizes.values()) - min(sizes.values()) <= 1 and sum(sizes.values()) == len(want)
    assert list(sizes) == [f"{i:05d}.tar" for i in range(len(parts))]
    wanted = plan.source_keys({0})
    assert sum(len(v) for v in wanted.values()) == len(parts[0])
