"""What every stage shares: its config base and the context it runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pipeline.config import StrictModel
from pipeline.layout import Dataset, join

if TYPE_CHECKING:
    from pipeline.pipeline_config import PipelineConfig


class StageConfig(StrictModel):
    """Base of every stage's config. `kind` defaults to the stage's key in the pipeline config."""

    kind: str | None = Field(None, description="stage kind; defaults to the stage's key in `stages:`")
    input: str | None = Field(None, description="input dataset name under the run root")
    output: str | None = Field(None, description="output dataset name under the run root")


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

    def dataset(self, name: str) -> Dataset:
        return Dataset(self.root, name)

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def init_ray(self) -> dict:
        """Start or attach to Ray (see `pipeline.runtime`); warn when a multi-node cluster gets a local run root."""
        from pipeline.runtime import init_ray
        from pipeline.storage import warn_local_root_on_cluster

        cluster = init_ray(self.pipeline.ray)
        warn_local_root_on_cluster(self.root, cluster)
        return cluster
