"""The stage kinds winnow knows. Each kind is a module with `CONFIG` (its pydantic model) and `run(ctx, cfg)`.

A stage module may also define `preflight(ctx, cfg)` (checks before any stage runs), `evaluate(ctx, cfg)` and
`eval_row(cfg, result)` (what `winnow eval` runs and prints), and `PRODUCES` (what it writes besides datasets:
"encoder" for a stage whose `model.pt` another stage may score with). Adding a stage is adding its module and one
line here.

Modules import only light dependencies at the top (pydantic, the config models), so loading and validating a
pipeline config never imports torch or Ray; the heavy work is imported inside `run`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGE_KINDS: dict[str, str] = {
    "download": "pipeline.stages.download",
    "ingest": "pipeline.stages.ingest",
    "score": "pipeline.stages.score",
    "filter": "pipeline.stages.filter",
    "reshard": "pipeline.stages.reshard",
    "train-clip": "pipeline.stages.train_clip",
    "caption": "pipeline.stages.caption",
    "train-diffusion": "pipeline.stages.train_diffusion",
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


def kinds_producing(what: str) -> list[str]:
    """Stage kinds whose module declares `PRODUCES = what` (e.g. "encoder")."""
    return [kind for kind in available_kinds() if getattr(stage_module(kind), "PRODUCES", None) == what]


def evaluable_kinds() -> list[str]:
    """Stage kinds `winnow eval` can evaluate (their module has `evaluate`)."""
    return [kind for kind in available_kinds() if hasattr(stage_module(kind), "evaluate")]
