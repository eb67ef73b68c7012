"""Apply a recipe to a scored pool: which samples are kept, which op dropped each other one, and the funnel.

Two fixed steps run before the recipe's ops: `unique_uid` (a URL listed twice is one sample: its first row in
shard/key order stays) and `decodable` (an image that does not decode cannot be trained on). The funnel records
how many samples are left after each step.

An op that judges captions (`capfilt`) also returns each caption's verdict; the selection then has a `captions`
column: per uid, every candidate caption with its provenance (web / synthetic), the judge's score and match
probability, the judge, and kept or the op that dropped it (kept captions first, best first). Reshard writes the
kept ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from filtering.ops import Drops, Pool
from filtering.recipe import Recipe

SELECTION_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("shard", pa.string()),
    ("key", pa.string()),
    ("kept", pa.bool_()),
    ("drop_step", pa.int32()),
    ("drop_op", pa.string()),
    ("drop_value", pa.float64()),
    ("drop_detail", pa.string()),
])
CAPTION_VERDICT = pa.struct([("text", pa.string()), ("source", pa.string()), ("score", pa.float64()),
                             ("probability", pa.float64()), ("judge", pa.string()), ("kept", pa.bool_()),
                             ("drop_op", pa.string())])


@dataclass
class Selection:
    table: pa.Table
    funnel: list[dict]

    @property
    def kept(self) -> int:
        return int(np.asarray(self.table.column("kept")).sum())


def _unique_uid(pool: Pool) -> Drops:
    uids, shards, keys = pool.strings("uid"), pool.strings("shard"), pool.strings("key")
    order = np.lexsort((keys.astype(str), shards.astype(str)))
    first_seen: dict[str, int] = {}
    mask = np.zeros(pool.n, bool)
    detail = np.full(pool.n, None, dtype=object)
    for i in order:
        j = first_seen.setdefault(uids[i], i)
        if j != i:
            mask[i], detail[i] = True, f"{shards[j]}/{keys[j]}"
    return Drops(mask, np.full(pool.n, np.nan), detail)


def _decodable(pool: Pool) -> Drops:
    ok = pool.bools("decodable")
    return Drops(~ok, np.full(pool.n, np.nan), pool.strings("decode_error"))


def apply_recipe(recipe: Recipe, pool: Pool) -> Selection:
    n = pool.n
    alive = np.ones(n, bool)
    drop_step = np.full(n, -1, dtype=np.int32)
    drop_op = np.full(n, None, dtype=object)
    drop_value = np.full(n, np.nan)
    drop_detail = np.full(n, None, dtype=object)
    funnel = [{"step": -1, "op": "pool", "label": "scored pool", "left": n, "dropped": 0}]
    captions = None  # per-caption verdicts, from an op that judges captions

    steps = [("unique_uid", "unique_uid", lambda: _unique_uid(pool), None),
             ("decodable", "decodable", lambda: _decodable(pool), None)]
    steps += [(op.name, op.label(), (lambda op=op: op.apply(pool, alive)), op) for op in recipe.ops]
    for index, (name, label, run, op) in enumerate(steps):
        drops = run()
        new = drops.mask & alive
        alive &= ~new
        drop_step[new] = index
        drop_op[new] = name
        drop_value[new] = drops.value[new]
        if drops.detail is not None:
            drop_detail[new] = drops.detail[new]
        if drops.captions is not None:
            captions = drops.captions
        entry = {"step": index, "op": name, "label": label, "left": int(alive.sum()), "dropped": int(new.sum())}
        cut = op.threshold(pool) if op is not None else None
        if cut is not None:
            entry["signal"], entry["threshold"] = cut[0], float(cut[1])
        funnel.append(entry)

    table = pa.Table.from_arrays([
        pool.table.column("uid"), pool.table.column("shard"), pool.table.column("key"),
        pa.array(alive), pa.array(drop_step, mask=drop_step < 0, type=pa.int32()),
        pa.array(drop_op.tolist(), type=pa.string()),
        pa.array(drop_value, mask=np.isnan(drop_value)),
        pa.array([None if d is None else str(d) for d in drop_detail], type=pa.string()),
    ], schema=SELECTION_SCHEMA)
    if captions is not None:
        table = table.append_column(pa.field("captions", pa.list_(CAPTION_VERDICT)),
                                    pa.array([c if c is not None else [] for c in captions],
                                             type=pa.list_(CAPTION_VERDICT)))
    return Selection(table, funnel)
