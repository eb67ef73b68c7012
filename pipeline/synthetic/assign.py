"""Place disjoint kinds (noise, faults) on a list at exact counts and random positions."""

from __future__ import annotations

import numpy as np


def exact_counts(rates: dict[str, float], n: int) -> dict[str, int]:
    """round(rate * n) per kind; the counts never exceed n in total (the rates are validated to sum <= 1)."""
    counts = {kind: int(round(rate * n)) for kind, rate in rates.items()}
    over = sum(counts.values()) - n
    for kind in sorted(counts, key=counts.get, reverse=True):  # rounding up can overshoot by a few: trim the largest
        if over <= 0:
            break
        cut = min(over, counts[kind])
        counts[kind] -= cut
        over -= cut
    return counts


def assign_kinds(rates: dict[str, float], n: int, rng: np.random.Generator, rest: str = "none") -> list[str]:
    """A kind per position: exactly `exact_counts(rates, n)[k]` positions of each kind k, the others `rest`."""
    kinds = np.full(n, rest, dtype=object)
    order = rng.permutation(n)
    start = 0
    for kind, count in exact_counts(rates, n).items():
        kinds[order[start:start + count]] = kind
        start += count
    return kinds.tolist()
