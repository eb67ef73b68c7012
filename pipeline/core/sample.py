"""The sample format: what a webdataset sample's members mean, in one place.

A sample is `{ext: bytes}` read by `pipeline.core.shards` (`<key>.jpg`, `<key>.txt`, `<key>.json`, ...):

- the image is the first member whose extension is in `IMAGE_EXTS` (decoded by `pipeline.core.images`);
- the captions are the JSON's `captions` list when it has one (every caption CapFilt kept, for example), else the
  one web caption: `<key>.txt`, else the JSON's `caption`. Blank captions do not count;
- the JSON's other keys (uid, url, source, provenance) are metadata.

Scoring and filtering read the first caption (`primary_caption`); training draws one of them at random each time
the sample is read (`pick_caption`). A reshard that writes several captions puts the first in `<key>.txt` too, so
a reader that knows only `.txt` sees the same first caption.
"""

from __future__ import annotations

import json
import random

from pipeline.core.images import IMAGE_EXTS


def sample_meta(files: dict) -> dict:
    """The sample's JSON member as a dict ({} when absent, unreadable or not an object)."""
    raw = files.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def image_member(files: dict) -> tuple[str | None, bytes | None]:
    """(extension, bytes) of the sample's image, (None, None) when it has none."""
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    return ext, (files[ext] if ext else None)


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.strip() if isinstance(value, str) and value.strip() else None


def captions(files: dict, meta: dict | None = None) -> list[str]:
    """The sample's captions in priority order (see the module docstring); [] when it has none."""
    meta = sample_meta(files) if meta is None else meta
    many = [c for c in (_text(c) for c in meta.get("captions") or [] if isinstance(c, str)) if c]
    if many:
        return many
    web = _text(files.get("txt")) or _text(meta.get("caption"))
    return [web] if web else []


def primary_caption(files: dict, meta: dict | None = None) -> str | None:
    """The caption scoring and filtering read: the first of `captions`."""
    found = captions(files, meta)
    return found[0] if found else None


def pick_caption(files: dict, rng: random.Random) -> str | None:
    """One caption drawn at random (training reads a different one of several each time)."""
    found = captions(files)
    return rng.choice(found) if found else None
