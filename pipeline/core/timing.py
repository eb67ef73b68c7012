"""Where a data stage's time goes: seconds per part of its work, and the part that holds it back.

    split = TimeSplit()
    for key, files in split.timed(read_samples(url), "reading"):   # time spent getting each item
        with split.part("decoding"):
            ...
    split.as_dict()      # {"reading": 1.2, "decoding": 8.4, "model": 0.0, "writing": 0.3, "waiting": 0.0}
    split.bottleneck()   # ("decoding", 0.84): the busiest working part and its share of the working parts' time

The parts are the same for every stage: `reading` (tar members, network), `decoding` (image decode, signals,
resize), `model` (a model's forward), `writing` (files), and `waiting` (a driver idle until the slowest part hands it
something). Parts run in different processes at once, so their seconds add up to more than the wall time; the
bottleneck is the working part with the most seconds (waiting is the consequence, never the cause). A stage records
a split per shard (`time_split` in the shard's result, or `StageRecord.add_time`) and its summary and manifest show
the total.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

PARTS = ("reading", "decoding", "model", "writing", "waiting")
WORKING = PARTS[:-1]


class TimeSplit:
    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.add(seconds or {})

    def add(self, seconds: dict[str, float] | TimeSplit) -> TimeSplit:
        items = seconds.seconds if isinstance(seconds, TimeSplit) else seconds
        for name, s in items.items():
            if name not in self.seconds:
                raise KeyError(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
            self.seconds[name] += float(s or 0.0)
        return self

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add({name: time.perf_counter() - t0})

    def timed(self, items: Iterable, name: str) -> Iterator:
        """`items`, with the time spent producing each one counted under `name`."""
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.add({name: time.perf_counter() - t0})
                return
            self.add({name: time.perf_counter() - t0})
            yield item

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}

    def bottleneck(self) -> tuple[str, float] | None:
        """(the working part with the most seconds, its share of the working parts' seconds); None before any."""
        total = sum(self.seconds[p] for p in WORKING)
        if total <= 0:
            return None
        name = max(WORKING, key=lambda p: self.seconds[p])
        return name, self.seconds[name] / total

    def text(self) -> str:
        """`decoding 8.4s, model 5.1s, ...; bottleneck: decoding (61%)` (parts with no time left out)."""
        parts = ", ".join(f"{p} {s:.1f}s" for p, s in self.seconds.items() if s >= 0.05)
        neck = self.bottleneck()
        return f"{parts or 'no time recorded'}" + (f"; bottleneck: {neck[0]} ({neck[1]:.0%})" if neck else "")
