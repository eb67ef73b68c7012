"""What every filter op shares: the scored pool it reads, the drops it returns, and the `Op` base class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel


class Pool:
    """The scored pool as columns (a pyarrow table) plus optional row-aligned image embeddings (N, D), and
    `context`: what holds for the whole pool rather than a row (`caption_calibration`: the caption stage's judge
    calibration, whose held-out best cut `capfilt: {min_probability: auto}` uses)."""

    def __init__(self, table: pa.Table, embeddings: np.ndarray | None = None, context: dict | None = None):
        if embeddings is not None and len(embeddings) != table.num_rows:
            raise ValueError(f"embeddings have {len(embeddings)} rows, signals {table.num_rows}")
        self.table = table
        self.embeddings = embeddings
        self.context = dict(context or {})
        self.n = table.num_rows
        self._cache: dict[str, np.ndarray] = {}

    @property
    def signals(self) -> set[str]:
        return set(self.table.column_names) | ({"embedding"} if self.embeddings is not None else set())

    def cached(self, key: str, make):
        """`make()` once per pool: what several ops derive from the same columns (the dedup priority order)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def numeric(self, name: str) -> np.ndarray:
        """A numeric column as float64 with NaN for nulls."""
        if name not in self._cache:
            col = pc.cast(self.table.column(name), pa.float64())  # nulls become NaN
            self._cache[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return self._cache[name]

    def strings(self, name: str) -> np.ndarray:
        """A column as Python objects (None for nulls). Costs a Python object per row: a pool of millions asks
        `codes`, `valid` or `take_strings` where it can."""
        key = f"str:{name}"
        if key not in self._cache:
            col = self.table.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                out = col.to_numpy(zero_copy_only=False)  # str / None per row, converted in C++
            else:
                values = col.to_pylist()
                out = np.empty(len(values), dtype=object)  # 1-D even when every value is a list of one length
                out[:] = values
            self._cache[key] = out
        return self._cache[key]

    def bools(self, name: str) -> np.ndarray:
        return np.asarray(self.table.column(name).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)

    def valid(self, name: str) -> np.ndarray:
        """(N,) bool: the column is not null."""
        return np.asarray(self.table.column(name).is_valid().to_numpy(zero_copy_only=False), dtype=bool)

    def codes(self, name: str, ordered: bool = True, cache: bool = True) -> np.ndarray:
        """(N,) int64 per row: equal strings have equal codes, -1 for null; without a Python object per row.
        `ordered`: the code is the string's rank among the column's distinct values, so codes sort as the strings
        do (by code point); else any code (no sort of the distinct values)."""
        key = f"codes{'' if ordered else '~'}:{name}"
        if not cache:  # asked once: not held for the rest of the recipe
            codes = self.codes(name, ordered)
            self._cache.pop(key, None)
            return codes
        if key not in self._cache and not ordered:
            hashed = fixed_width_hash(self.table.column(name))  # hex digests and uids: no dictionary to build
            if hashed is not None:
                self._cache[key] = hashed
        if key not in self._cache:
            enc = pc.dictionary_encode(self.table.column(name))  # one dictionary shared by every chunk
            chunks = enc.chunks
            if not chunks:
                self._cache[key] = np.empty(0, np.int64)
                return self._cache[key]
            dictionary = chunks[-1].dictionary
            idx = np.concatenate([np.asarray(c.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
                                  for c in chunks])
            if ordered:
                rank = np.empty(len(dictionary), np.int64)
                rank[np.asarray(pc.sort_indices(dictionary))] = np.arange(len(dictionary))
                idx = np.where(idx >= 0, rank[np.maximum(idx, 0)], -1)
            self._cache[key] = idx
        return self._cache[key]

    def take_strings(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The strings (None for nulls) of some rows only, as Python objects."""
        taken = self.table.column(name).take(pa.array(np.asarray(rows, dtype=np.int64)))
        return taken.to_numpy(zero_copy_only=False) if len(rows) else np.empty(0, dtype=object)

    def drop(self, *names: str) -> None:
        """Forget columns (and their cached forms) no later op reads: a pool of millions holds only what is left
        to use."""
        keep = [c for c in self.table.column_names if c not in names]
        self.table = self.table.select(keep)
        for k in [k for k in self._cache if k.split(":")[-1] in names]:
            del self._cache[k]


def _mix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # splitmix64's finaliser: wraps by design
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fixed_width_hash(column: pa.ChunkedArray) -> np.ndarray | None:
    """(N,) int64 codes of a string column whose values all have one length that is a multiple of 8 bytes (hex
    digests, 32-hex uids), hashed from the strings' bytes in place: equal strings, equal codes; and checked, so
    that different strings never share one (a collision, or any other column: None, and the caller encodes it
    another way). 8 bytes a row, where a dictionary would copy every distinct string."""
    if not (pa.types.is_string(column.type) and column.null_count == 0 and column.num_chunks):
        return None
    width, parts = None, []
    for chunk in column.chunks:
        n = len(chunk)
        if n == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, n + 1, chunk.offset * 4)
        lengths = np.diff(offsets)
        width = int(lengths[0]) if width is None else width
        if width == 0 or width % 8 or (lengths != width).any():
            return None
        words = np.frombuffer(chunk.buffers()[2], np.uint8, width * n, int(offsets[0])).reshape(n, width)
        words = words.view("<u8")
        h = np.full(n, width, np.uint64)
        for w in range(words.shape[1]):
            h = _mix64(h ^ words[:, w])
        parts.append(h)
    if not parts:
        return None
    codes = np.concatenate(parts).view(np.int64)
    # exact: every group of equal hashes must hold one string (checked on the few rows whose hash repeats)
    ordered = np.sort(codes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if len(repeated):
        rows = np.flatnonzero(repeated[np.minimum(np.searchsorted(repeated, codes), len(repeated) - 1)] == codes)
        seen: dict[int, str] = {}
        for code, text in zip(codes[rows].tolist(), column.take(pa.array(rows)).to_pylist(), strict=True):
            if seen.setdefault(code, text) != text:
                return None
    return codes


@dataclass
class Drops:
    mask: np.ndarray  # (N,) bool: dropped by this op (only among alive rows)
    value: np.ndarray  # (N,) float: the value that dropped the row (NaN where not numeric)
    detail: np.ndarray | None = None  # (N,) object: text (a reason, the kept duplicate's uid), None where none
    captions: np.ndarray | None = None  # (N,) object: an op that judges captions: per row, each caption's verdict


class Op:
    """A filter op. `name` is its key in a recipe; it takes either a parameters model (`params_model`, for
    `- op: {key: value}`) or one value (`scalar = (type, least value or None)`, for `- op: 3.0`), never both.

    A named op whose name is also a signal column (`aspect_ratio`) would take over that column's generic threshold
    (`aspect_ratio: {max: 3}`): the registry refuses it unless the op says it replaces that column
    (`replaces_signal = "aspect_ratio"`)."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel] | None] = None
    scalar: ClassVar[tuple[type, float | None] | None] = None
    replaces_signal: ClassVar[str | None] = None

    def __init__(self, params: Any):
        self.params = params

    def requires(self) -> set[str]:
        return set()

    def label(self) -> str:
        p = self.params.model_dump(exclude_none=True) if isinstance(self.params, BaseModel) else self.params
        if isinstance(p, dict):
            return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")"
        return f"{self.name}: {str(p).lower() if isinstance(p, bool) else p}"

    def threshold(self, pool: Pool) -> tuple[str, float] | None:
        """(signal, threshold) for histograms in the report, where the op is a cut on one signal."""
        return None

    def apply(self, pool: Pool, alive: np.ndarray) -> Drops:
        raise NotImplementedError


def outside(values: np.ndarray, alive: np.ndarray, low: float | None = None, high: float | None = None) -> Drops:
    """Drop alive rows whose value is missing, < low or > high."""
    bad = np.isnan(values)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values > high
    return Drops(alive & bad, values.copy())


def no_drops(n: int) -> Drops:
    return Drops(np.zeros(n, bool), np.full(n, np.nan))
