"""Sample identity: a stable 128-bit id per URL, the same in every stage and every run."""

from __future__ import annotations

import hashlib


def uid_of(url: str) -> str:
    """128-bit hex hash of the URL (DataComp's convention for `uid`)."""
    return hashlib.md5(url.encode("utf-8"), usedforsecurity=False).hexdigest()


def derived_seed(seed: int, key: str | int) -> int:
    """A 63-bit seed for one item (a caption row, a held-out sample) from a run's `seed` and the item's key: stable
    across processes and Python versions, and independent of which batch the item is in."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
