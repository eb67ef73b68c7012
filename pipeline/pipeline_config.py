"""The pipeline config: run root, Ray, the synthetic web (optional) and the ordered stages."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline.core.config import ConfigError, StrictModel, load_yaml, parse_override, set_path, validate
from pipeline.runtime import RayConfig
from pipeline.stages import available_kinds, stage_module
from pipeline.stages.base import StageConfig
from pipeline.synthetic.config import SyntheticWebConfig


class PipelineConfig(StrictModel):
    name: str = Field("winnow", description="run name, shown in reports and job names")
    root: str = Field("runs/default", description="run root: every dataset and model of this run lives under it")
    ray: RayConfig = RayConfig()
    synthetic: SyntheticWebConfig | None = Field(
        None, description="the synthetic web, for `source: synthetic`: a local folder served on loopback (with a "
                          "remote root, give `synthetic.dir` as an absolute local path)")
    stages: dict[str, Any] = Field(default_factory=dict, description="ordered stages: name -> stage config")

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, root: str) -> str:
        # Ray workers (Ray Train's in particular) run in their own working directories: a relative local root
        # would name a different folder there. Resolve it once, against the directory winnow was started in.
        if "://" in root or os.path.isabs(root):
            return root
        return os.path.abspath(root)

    def stage(self, name: str) -> StageConfig:
        return self.stages[name]

    def output_of(self, name: str) -> str:
        """Where stage `name` writes: its dataset or model directory name under the run root."""
        return self.stages[name].output_dataset(name)

    def stages_producing(self, what: str) -> list[str]:
        """Names of this pipeline's stages whose kind produces `what` (e.g. "encoder")."""
        from pipeline.stages import kinds_producing

        kinds = set(kinds_producing(what))
        return [name for name, st in self.stages.items() if st.kind in kinds]

    def synthetic_dir(self) -> str:
        from pipeline.core.layout import join

        web = self.synthetic or SyntheticWebConfig()
        if os.path.isabs(web.dir) or "://" in web.dir:
            return web.dir
        if "://" in self.root:
            # The web is a local test source (built on disk, served on loopback), never shared storage.
            raise ConfigError(f"synthetic.dir: {web.dir!r} would resolve under the remote root {self.root}; the "
                              "synthetic web is a local folder served on loopback: give an absolute local path "
                              "(e.g. --set synthetic.dir=/tmp/winnow-web)")
        return join(self.root, web.dir)


TOP_LEVEL = ("name", "root", "ray", "synthetic", "stages")


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """`--set download.thread_count=16` (a stage's key) or `--set ray.num_cpus=2` (a top-level key)."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        stages = data.setdefault("stages", {}) or {}
        if parts[0] in TOP_LEVEL:
            set_path(data, parts, value, source)
        elif parts[0] in stages:
            if len(parts) == 1:
                raise ConfigError(f"--set {text}: name a key inside stage {parts[0]!r}, e.g. {parts[0]}.input=...")
            set_path(stages, parts, value, source)
        else:
            known = [*TOP_LEVEL, *stages]
            close = difflib.get_close_matches(parts[0], known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"--set {text}: {parts[0]!r} is neither a top-level key ({', '.join(TOP_LEVEL)}) "
                f"nor a stage of this config ({', '.join(stages) or 'none'}){hint}"
            )
    return data


def parse_pipeline_config(data: dict, source: str) -> PipelineConfig:
    raw_stages = data.get("stages") or {}
    if not isinstance(raw_stages, dict):
        raise ConfigError(
            f"{source}: stages: expected a mapping of stage name -> settings, got {type(raw_stages).__name__}")
    cfg = validate(PipelineConfig, {**data, "stages": {}}, source)
    stages: dict[str, StageConfig] = {}
    for name, body in raw_stages.items():
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: stages.{name}: expected a mapping of settings, got {type(body).__name__}")
        kind = body.get("kind") or name
        if not isinstance(kind, str):
            raise ConfigError(f"{source}: stages.{name}.kind: expected a stage kind name, got {kind!r}")
        try:
            module = stage_module(kind)
        except (KeyError, ModuleNotFoundError):
            known = available_kinds()
            raise ConfigError(
                f"{source}: stages.{name}: unknown stage kind {kind!r}; known kinds: {', '.join(known)} "
                f"(a stage's kind is its key unless it sets `kind:`)"
            ) from None
        stage_cfg = validate(module.CONFIG, {**body, "kind": kind}, source, prefix=("stages", name))
        stages[name] = stage_cfg
    cfg.stages = stages
    return cfg


def load_pipeline_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load, override and validate a pipeline config; every problem is a ConfigError naming file and key."""
    source = str(path)
    data = load_yaml(path)
    data = apply_overrides(data, list(overrides), source)
    return parse_pipeline_config(data, source)
