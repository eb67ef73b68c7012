"""What every filter op shares: the scored pool it reads, the drops it returns, and the `Op` base class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel


class Pool:
    """The scored pool as columns (a pyarrow table) plus optional row-aligned image embeddings (N, D)."""

    def __init__(self, table: pa.Table, embeddings: np.ndarray | None = None):
        if embeddings is not None and len(embeddings) != table.num_rows:
            raise ValueError(f"embeddings have {len(embeddings)} rows, signals {table.num_rows}")
        self.table = table
        self.embeddings = embeddings
        self.n = table.num_rows
        self._cache: dict[str, np.ndarray] = {}

    @property
    def signals(self) -> set[str]:
        return set(self.table.column_names) | ({"embedding"} if self.embeddings is not None else set())

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

    def codes(self, name: str) -> np.ndarray:
        """(N,) int64 per row: the rank of its string among the column's distinct values (-1 for null), so equal
        strings have equal codes and codes sort as the strings do (by code point), without a Python object per
        row."""
        key = f"codes:{name}"
        if key not in self._cache:
            enc = pc.dictionary_encode(self.table.column(name))  # one dictionary shared by every chunk
            chunks = enc.chunks
            if not chunks:
                self._cache[key] = np.empty(0, np.int64)
                return self._cache[key]
            dictionary = chunks[-1].dictionary
            rank = np.empty(len(dictionary), np.int64)
            rank[np.asarray(pc.sort_indices(dictionary))] = np.arange(len(dictionary))
            idx = np.concatenate([np.asarray(c.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
                                  for c in chunks])
            self._cache[key] = np.where(idx >= 0, rank[np.maximum(idx, 0)], -1)
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
