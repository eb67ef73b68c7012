"""Filter ops: each reads signals of the samples still in the pool and says which to drop, and with what value.

An op is a small class (`base.Op`): `apply(pool, alive) -> Drops` (a mask of dropped samples, the value that dropped
each, and an optional detail such as the kept duplicate's uid). Ops never recompute signals; they read the score
stage's columns. `requires` names the signals an op reads, so a recipe is checked against what was computed before
any work starts. The ops live by family:

    image.py        min_image_side, max_aspect_ratio (aspect_ratio = long side / short side)
    captions.py     min_caption_words, min_caption_chars, drop_generic_captions, capfilt
    duplicates.py   dedup (exact, phash, semantic)
    scores.py       `<numeric signal>: {min|max|top_fraction}` on any numeric column (dfn_score, ...)
    lists.py        uids (keep or drop the uids of a DataComp subset file)

Adding an op: one `Op` subclass in the module of its family with `name` (its recipe key), `requires`, `apply`, and
how it takes its parameters: `params_model` (a pydantic model, for `- op: {key: value}`) or `scalar = (type, least
value or None)` (one value, for `- op: 3.0`); then one entry in `_OPS` below. `NAMED_OPS` is the one registry
(recipes, the known-ops error, the docs read it) and is checked when it is built: a name is registered once, takes
exactly one of `params_model` / `scalar`, and is not the name of a signal column, because a recipe key naming a
numeric column is that column's generic threshold (`aspect_ratio: {max: 3}`) and an op of the same name would take
it over silently. An op meant to replace a column's threshold says so: `replaces_signal = "<column>"`.
"""

from __future__ import annotations

from collections.abc import Iterable

from filtering.capfilt import CAPTION_SIGNALS
from filtering.ops.base import Drops, Op, Pool, no_drops, outside
from filtering.ops.captions import CapFilt, DropGenericCaptions, MinCaptionChars, MinCaptionWords
from filtering.ops.duplicates import Dedup, DedupParams
from filtering.ops.image import MaxAspectRatio, MinImageSide
from filtering.ops.lists import Uids, UidsParams
from filtering.ops.scores import ScoreThreshold, ThresholdParams, top_fraction_threshold
from filtering.signals import signals_schema

__all__ = ["CapFilt", "Dedup", "DedupParams", "DropGenericCaptions", "Drops", "MaxAspectRatio", "MinCaptionChars",
           "MinCaptionWords", "MinImageSide", "NAMED_OPS", "Op", "OpRegistryError", "Pool", "SCALAR_PARAMS",
           "ScoreThreshold", "SIGNAL_COLUMNS", "ThresholdParams", "Uids", "UidsParams", "build_registry", "no_drops",
           "outside", "top_fraction_threshold"]

_OPS: tuple[type[Op], ...] = (MinImageSide, MaxAspectRatio, MinCaptionWords, MinCaptionChars, DropGenericCaptions,
                              Dedup, CapFilt, Uids)
# Every column a recipe may read: the score stage's signals (with a model), the caption stage's, embeddings.
SIGNAL_COLUMNS = frozenset(signals_schema(with_model=True).names) | frozenset(CAPTION_SIGNALS) | {"embedding"}


class OpRegistryError(TypeError):
    """A filter op that cannot be registered as it is (a programming error, raised at import)."""


def build_registry(ops: Iterable[type[Op]], signal_columns: Iterable[str] = SIGNAL_COLUMNS) -> dict[str, type[Op]]:
    """name -> op class, after checking each op (see the module docstring)."""
    columns = set(signal_columns)
    registry: dict[str, type[Op]] = {}
    for op in ops:
        name = getattr(op, "name", None)
        if not isinstance(name, str) or not name:
            raise OpRegistryError(f"{op.__name__}: a named op needs `name`, its key in a recipe")
        if name in registry:
            raise OpRegistryError(f"{op.__name__}: op name {name!r} is already registered by "
                                  f"{registry[name].__name__}")
        if name in columns and op.replaces_signal != name:
            raise OpRegistryError(
                f"{op.__name__}: op name {name!r} is also a signal column, whose generic threshold "
                f"(`{name}: {{min|max|top_fraction}}`) it would silently take over; rename the op, or set "
                f"`replaces_signal = {name!r}` if replacing that threshold is the point")
        if (op.params_model is None) == (op.scalar is None):
            raise OpRegistryError(f"{op.__name__}: give exactly one of `params_model` (a mapping of parameters) "
                                  "and `scalar` ((type, least value or None): one value)")
        registry[name] = op
    return registry


NAMED_OPS: dict[str, type[Op]] = build_registry(_OPS)
# name -> (type, least value or None) of the ops that take one value (derived from the registry).
SCALAR_PARAMS = {name: op.scalar for name, op in NAMED_OPS.items() if op.scalar is not None}
