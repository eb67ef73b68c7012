"""The stage kinds winnow knows. Each kind is a module with `CONFIG` (its pydantic model) and `run(ctx, cfg)`.

Modules import only light dependencies at the top (pydantic, the config models), so loading and validating a
pipeline config never imports torch or Ray; the heavy work is imported inside `run`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGE_KINDS: dict[str, str] = {
    "download": "pipeline.stages.download",
    "score": "pipeline.stages.score",
    "filter": "pipeline.stages.filter",
    "reshard": "pipeline.stages.reshard",
    "train-clip": "pipeline.stages.train_clip",
}


def stage_module(kind: str) -> ModuleType:
    if kind not in STAGE_KINDS:
        raise KeyError(kind)
    return importlib.import_module(STAGE_KINDS[kind])


def available_kinds() -> list[str]:
    """Kinds whose module exists in this checkout (a kind listed before its module lands is not offered)."""
    out = []
    for kind, mod in STAGE_KINDS.items():
        if importlib.util.find_spec(mod) is not None:
            out.append(kind)
    return out
