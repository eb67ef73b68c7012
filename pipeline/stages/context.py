"""The context a stage runs in: the pipeline's config, its run root, this stage's name and where it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.layout import Dataset, join
from pipeline.pipeline_config import PipelineConfig


@dataclass
class StageContext:
    """Where a stage runs: the pipeline's config, its run root, and this stage's name."""

    pipeline: PipelineConfig
    stage: str  # the stage's key in `stages:`
    config_path: str | None = None
    results: dict[str, Any] = field(default_factory=dict)  # earlier stages' results in this run

    @property
    def root(self) -> str:
        return self.pipeline.root

    @property
    def output(self) -> str:
        """This stage's output dataset name (see `StageConfig.output_dataset`)."""
        return self.pipeline.output_of(self.stage)

    def dataset(self, name: str) -> Dataset:
        return Dataset(self.root, name)

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def init_ray(self) -> dict:
        """Start or attach to Ray (see `pipeline.runtime`); warn when a multi-node cluster gets a local run root."""
        from pipeline.core.storage import warn_local_root_on_cluster
        from pipeline.runtime import init_ray

        cluster = init_ray(self.pipeline.ray)
        warn_local_root_on_cluster(self.root, cluster)
        return cluster
