"""The one model-config registry: winnow's `configs/models/*.json` (and a user's config file or folder) made known
to open_clip, after which `open_clip.create_model_and_transforms("tiny-sigmoid-vit", pretrained=".../model.pt")`
builds winnow's tiny models by name. open_clip is imported only when a config is registered."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.paths import MODEL_CONFIGS_DIR


def register_model_configs(extra: str | Path | None = None) -> list[str]:
    """Add `configs/models/` and, if given, a model config JSON file or folder to open_clip's registry (idempotent);
    return the names of winnow's own configs."""
    import open_clip
    from open_clip import factory

    paths = [MODEL_CONFIGS_DIR] if MODEL_CONFIGS_DIR.is_dir() else []
    if extra:
        if not Path(extra).exists():
            raise FileNotFoundError(f"model config {extra}: no such file or folder")
        paths.append(Path(extra))
    known = {Path(q).resolve() for q in factory._MODEL_CONFIG_PATHS}
    for p in paths:
        if p.resolve() not in known:
            open_clip.add_model_config(p)
    return sorted(p.stem for p in MODEL_CONFIGS_DIR.glob("*.json"))


def find_model_config(name: str, extra: str | Path | None = None) -> dict | None:
    """A model's config JSON found without importing open_clip (which imports torch): the user's file or folder,
    winnow's own, then open_clip's built-in ones; None when none has it."""
    import importlib.util
    import json

    dirs = [MODEL_CONFIGS_DIR]
    if extra:
        p = Path(extra)
        if p.is_file():
            if p.stem == name:
                return json.loads(p.read_text())
        else:
            dirs.insert(0, p)
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "model_configs")
    for d in dirs:
        if (d / f"{name}.json").is_file():
            return json.loads((d / f"{name}.json").read_text())
    return None


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextmanager
def random_init_expected():
    """While building an open_clip model that winnow initialises randomly on purpose (one trained from scratch, or
    one whose weights are loaded just after), drop open_clip's root-logger warning "No pretrained weights loaded for
    model ... Model initialized randomly": it would reach the terminal from every training worker and the driver.
    Only that record is dropped, only on this process's root logger, and only inside the block."""
    notice = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)
