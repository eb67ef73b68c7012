"""The actor-pool runner's driver side: rows in any order and possibly twice; a shard completes once, exactly."""

from __future__ import annotations

import json

import numpy as np

from pipeline.execution.actor_pool import END, INFO, ROWS, ShardCollector


def batch(rows: list[tuple[str, str]], end: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """(shard, key) rows with a (2,) embedding each, then one end-of-shard row per entry of `end` (shard -> rows)."""
    end = end or {}
    shards = [s for s, _ in rows] + list(end)
    n = len(shards)
    return {"shard": np.array(shards, dtype=object), "key": np.array([k for _, k in rows] + [""] * len(end), object),
            "emb": np.arange(2 * n, dtype=np.float32).reshape(n, 2),
            END: np.array([False] * len(rows) + [True] * len(end)),
            ROWS: np.array([-1] * len(rows) + list(end.values()), dtype=np.int64),
            INFO: np.array([""] * len(rows) + [json.dumps({"shard": s}) for s in end], dtype=object)}


def test_a_shard_completes_once_all_its_keys_are_in_whatever_the_order_and_repeats():
    c = ShardCollector()
    assert c.add(batch([("a", "1"), ("b", "1")])) == []
    assert c.add(batch([("a", "1")], end={"a": 3})) == []  # a repeated row and the end: 1 of 3 keys
    assert c.add(batch([("a", "2"), ("a", "3"), ("a", "2")])) == ["a"]
    cols, info = c.pop("a")
    assert sorted(cols["key"]) == ["1", "2", "3"] and cols["emb"].shape == (3, 2)
    assert info == {"shard": "a", "time_split": {"model": 0.0}}  # the model's seconds join the reader's split
    assert set(cols) == {"shard", "key", "emb"}  # the protocol's columns stay with the runner
    # late copies of a written shard (a retried task) are ignored: the shard is not completed twice
    assert c.add(batch([("a", "1"), ("a", "2"), ("a", "3")], end={"a": 3})) == []
    assert c.add(batch([], end={"b": 1})) == ["b"]


def test_an_empty_shard_gets_zero_rows_in_the_layout_of_its_end_row():
    c = ShardCollector()
    assert c.add(batch([], end={"e": 0})) == ["e"]
    cols, _ = c.pop("e")
    assert cols["key"].shape == (0,) and cols["emb"].shape == (0, 2) and cols["emb"].dtype == np.float32
