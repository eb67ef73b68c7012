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


def _shard_key_order(pool: Pool) -> np.ndarray | None:
    """Row indices in (shard, key) order (stable). A pool read shard by shard with keys in order (the usual case)
    is already sorted: checked by one comparison of neighbours, then no sort."""
    import pyarrow.compute as pc

    shard, key = pool.table.column("shard"), pool.table.column("key")
    if pool.n > 1 and shard.null_count == 0 and key.null_count == 0:
        s0, s1, k0, k1 = shard.slice(0, pool.n - 1), shard.slice(1), key.slice(0, pool.n - 1), key.slice(1)
        # sorted: every neighbour pair has shard0 < shard1, or equal shards and key0 <= key1
        ok = pc.or_(pc.less(s0, s1), pc.and_(pc.equal(s0, s1), pc.less_equal(k0, k1)))
        if pc.all(ok).as_py():
            return None  # already in order
    return np.asarray(pc.sort_indices(pool.table.select(["shard", "key"]),
                                      sort_keys=[("shard", "ascending"), ("key", "ascending")]))  # stable


def _unique_uid(pool: Pool) -> Drops:
    """A uid's first row in (shard, key) order stays; each later row of it is dropped, naming the first's
    shard/key. Vectorised (uid codes, Arrow's sort), so a pool of millions costs seconds."""
    n = pool.n
    mask = np.zeros(n, bool)
    detail = np.full(n, None, dtype=object)
    if n == 0:
        return Drops(mask, np.full(n, np.nan), detail)
    order = _shard_key_order(pool)
    codes = pool.codes("uid", ordered=False, cache=False)
    codes = codes if order is None else codes[order]
    _, first = np.unique(codes, return_index=True)  # position (in order) of each uid's first row
    is_first = np.zeros(n, bool)
    is_first[first] = True
    later = np.flatnonzero(~is_first)
    if len(later):
        first_of = first[np.searchsorted(codes[first], codes[later])]
        rows = later
        if order is not None:
            first_of, rows = order[first_of], order[later]
        shards, keys = pool.take_strings("shard", first_of), pool.take_strings("key", first_of)
        mask[rows] = True
        detail[rows] = [f"{s}/{k}" for s, k in zip(shards, keys, strict=True)]
    return Drops(mask, np.full(n, np.nan), detail)


def _decodable(pool: Pool) -> Drops:
    ok = pool.bools("decodable")
    detail = np.full(pool.n, None, dtype=object)  # the error of the few that fail, not a string per row
    bad = np.flatnonzero(~ok)
    detail[bad] = pool.take_strings("decode_error", bad)
    return Drops(~ok, np.full(pool.n, np.nan), detail)


# Columns every step may read besides its own `requires` (dedup ranks copies by dfn_score and pixels), and those
# the selection is made of: never released.
KEEP_COLUMNS = {"uid", "shard", "key", "decodable", "decode_error", "dfn_score", "width", "height"}


def apply_recipe(recipe: Recipe, pool: Pool, release: bool = False) -> Selection:
    """Run the fixed steps and the recipe's ops over the pool. `release`: forget each signal column once no later
    op reads it (a pool of millions then holds only what is left to use); the pool is not reusable after."""
    n = pool.n
    alive = np.ones(n, bool)
    drop_step = np.full(n, -1, dtype=np.int32)
    drop_op = np.full(n, -1, dtype=np.int16)  # index into the steps' names: 2 bytes a row, not an object
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
        drop_op[new] = index
        drop_value[new] = drops.value[new]
        if drops.detail is not None:
            drop_detail[new] = drops.detail[new]
        if drops.captions is not None:
            captions = drops.captions
        entry = {"step": index, "op": name, "label": label, "left": int(alive.sum()), "dropped": int(new.sum())}
        cut = op.threshold(pool) if op is not None else None  # an op caches what its apply computed
        if cut is not None:
            entry["signal"], entry["threshold"] = cut[0], float(cut[1])
        funnel.append(entry)
        del drops, new  # not held while the next op runs: a pool of millions peaks there
        if release and op is not None:
            later = set().union(*(o.requires() for _, _, _, o in steps[index + 1:] if o is not None))
            pool.drop(*(op.requires() - later - KEEP_COLUMNS - {"embedding"}))

    has_detail = np.flatnonzero(drop_detail != None)  # noqa: E711 (elementwise)
    drop_detail[has_detail] = [str(d) for d in drop_detail[has_detail]]
    table = pa.Table.from_arrays([
        pool.table.column("uid"), pool.table.column("shard"), pool.table.column("key"),
        pa.array(alive), pa.array(drop_step, mask=drop_step < 0, type=pa.int32()),
        pa.DictionaryArray.from_arrays(pa.array(drop_op, mask=drop_op < 0),
                                       pa.array([name for name, *_ in steps], pa.string())).cast(pa.string()),
        pa.array(drop_value, mask=np.isnan(drop_value)),
        pa.array(drop_detail, type=pa.string()),
    ], schema=SELECTION_SCHEMA)
    if captions is not None:
        table = table.append_column(pa.field("captions", pa.list_(CAPTION_VERDICT)),
                                    pa.array([c if c is not None else [] for c in captions],
                                             type=pa.list_(CAPTION_VERDICT)))
    return Selection(table, funnel)
