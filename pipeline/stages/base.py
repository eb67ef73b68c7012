"""What every stage's config shares, and the one answer to "where does this stage write"."""

from __future__ import annotations

from pydantic import Field

from pipeline.core.config import StrictModel


class StageConfig(StrictModel):
    """Base of every stage's config. `kind` defaults to the stage's key in the pipeline config."""

    kind: str | None = Field(None, description="stage kind; defaults to the stage's key in `stages:`")
    input: str | None = Field(None, description="input dataset name under the run root")
    output: str | None = Field(None, description="output dataset name under the run root")

    def output_dataset(self, stage: str) -> str:
        """The dataset (or model directory) this stage writes under the run root: `output`, else the stage's name.
        Other stages, `winnow eval`, `winnow status` and the report ask this instead of re-deriving it."""
        return self.output or stage
