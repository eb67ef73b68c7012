"""Sample identity: a stable 128-bit id per sample, the same in every stage and every run, and DataComp's subset
files (the same ids as pairs of 64-bit integers).

A sample's uid is, in order (`sample_uid`, used by ingest and by every reader that meets a sample without one):

- `source_uid`: its JSON's `uid` when that is a 128-bit hex string (DataComp's pools carry one);
- `url_md5`: the MD5 of its URL (DataComp's convention, and the download stage's: a re-download and an ingest of
  the same URL agree);
- `image_sha256`: the first 128 bits of the SHA-256 of its image bytes (an image folder or a parquet export);
- `shard_key`: the MD5 of `<shard>/<key>`, for a sample with none of those (no image either: it is dropped later).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

UID_RULES = ("source_uid", "url_md5", "image_sha256", "shard_key")
_UID = re.compile(r"^[0-9a-fA-F]{32}$")
# DataComp's subset format, as its resharder reads it (mlfoundations/datacomp resharder.py: `u16 =
# np.dtype("u8,u8")`, `np.load(subset_file, mmap_mode="r")` then `assert subset.dtype == u16`, and each sample's
# JSON uid as `divmod(int(uid, 16), 2**64)` looked up with `np.searchsorted`, so the array is sorted).
SUBSET_DTYPE = np.dtype("u8,u8")


def uid_of(url: str) -> str:
    """128-bit hex hash of the URL (DataComp's convention for `uid`)."""
    return hashlib.md5(url.encode("utf-8"), usedforsecurity=False).hexdigest()


def as_uid(value) -> str | None:  # noqa: ANN001 - anything a JSON field holds
    """`value` as a uid (lower-case 32 hex digits) when it is one, else None."""
    return value.lower() if isinstance(value, str) and _UID.match(value) else None


def sample_uid(meta: dict, image: bytes | None, fallback: str) -> tuple[str, str]:
    """(uid, rule) of a sample from its JSON metadata and image bytes; `fallback` is its `<shard>/<key>`."""
    uid = as_uid(meta.get("uid"))
    if uid:
        return uid, "source_uid"
    url = meta.get("url")
    if isinstance(url, str) and url:
        return uid_of(url), "url_md5"
    if image:
        return hashlib.sha256(image).hexdigest()[:32], "image_sha256"
    return uid_of(fallback), "shard_key"


def uid_halves(uids) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - any sequence of strings
    """(pairs, valid): each uid as DataComp's (high 64 bits, low 64 bits) pair (dtype SUBSET_DTYPE), and which
    entries were uids at all (the others are (0, 0))."""
    uids = list(uids)
    valid = np.array([as_uid(u) is not None for u in uids], dtype=bool)
    text = "".join(u if ok else "0" * 32 for u, ok in zip(uids, valid, strict=True))
    words = np.frombuffer(bytes.fromhex(text), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    pairs = np.empty(len(uids), SUBSET_DTYPE)
    pairs["f0"], pairs["f1"] = words[:, 0], words[:, 1]
    return pairs, valid


def subset_array(uids) -> np.ndarray:  # noqa: ANN001 - any sequence of uid strings
    """A DataComp subset: the uids' (high, low) pairs, unique and sorted. ValueError on something not a uid."""
    uids = list(uids)
    pairs, valid = uid_halves(uids)
    if not valid.all():
        bad = [u for u, ok in zip(uids, valid, strict=True) if not ok][:3]
        raise ValueError(f"{int((~valid).sum())} ids are not 128-bit hex uids (e.g. {bad}); a DataComp subset "
                         "holds 128-bit uids only")
    return np.unique(pairs)


def check_subset_header(fileobj, name: str) -> tuple[int, ...]:  # noqa: ANN001 - a readable binary file
    """The shape of a subset file, from its .npy header only; ValueError naming `name` when it is not a DataComp
    subset (a 1-D .npy of two unsigned 64-bit fields)."""
    try:
        fmt = np.lib.format
        version = fmt.read_magic(fileobj)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version} (1.0 or 2.0 expected)")
        shape, _, dtype = read_header(fileobj)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{name}: not a NumPy .npy file ({err})") from None
    names = dtype.names or ()
    if len(shape) != 1 or len(names) != 2 or any(dtype[n] != np.dtype("<u8") for n in names):
        raise ValueError(f"{name}: expected a 1-D array of dtype {SUBSET_DTYPE} (a DataComp subset: each uid's "
                         f"two 64-bit halves), got shape {shape} dtype {dtype}")
    return shape


def load_subset(fileobj, name: str) -> np.ndarray:  # noqa: ANN001 - a seekable binary file
    """A subset file's sorted unique pairs; ValueError naming `name` when it is not a DataComp subset (.npy)."""
    check_subset_header(fileobj, name)
    fileobj.seek(0)
    arr = np.load(fileobj, allow_pickle=False)
    names = arr.dtype.names
    out = np.empty(len(arr), SUBSET_DTYPE)
    out["f0"], out["f1"] = arr[names[0]], arr[names[1]]
    return np.unique(out)


def in_subset(pairs: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """(N,) bool: which pairs are in the sorted `subset`."""
    if len(subset) == 0:
        return np.zeros(len(pairs), bool)
    i = np.minimum(np.searchsorted(subset, pairs), len(subset) - 1)
    return subset[i] == pairs


def derived_seed(seed: int, key: str | int) -> int:
    """A 63-bit seed for one item (a caption row, a held-out sample) from a run's `seed` and the item's key: stable
    across processes and Python versions, and independent of which batch the item is in."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
