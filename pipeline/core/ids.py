"""Sample identity: a stable 128-bit id per URL, the same in every stage and every run."""

from __future__ import annotations

import hashlib


def uid_of(url: str) -> str:
    """128-bit hex hash of the URL (DataComp's convention for `uid`)."""
    return hashlib.md5(url.encode("utf-8"), usedforsecurity=False).hexdigest()
