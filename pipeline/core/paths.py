"""Where the checkout's own files are: the repo root (the Ray job's working directory), configs, recipes, models."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
MODEL_CONFIGS_DIR = CONFIGS_DIR / "models"  # winnow's tiny open_clip model configs (JSON)
RECIPES_DIR = CONFIGS_DIR / "filters"  # filter recipes (YAML)
