"""What every stage's config shares, and the one answer to "where does this stage write"."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from pipeline.core.config import ConfigError, StrictModel
from pipeline.core.layout import check_dataset_name


class StageConfig(StrictModel):
    """Base of every stage's config. `kind` defaults to the stage's key in the pipeline config."""

    kind: str | None = Field(None, description="stage kind; defaults to the stage's key in `stages:`")
    input: str | None = Field(None, description="input dataset name under the run root")
    output: str | None = Field(None, description="output dataset name under the run root")
    # A stage that adds a folder beside its input's shards (caption's captions/) writes into its input: that one
    # dataset is its output and the only one it locks.
    WRITES_INTO_INPUT: ClassVar[bool] = False

    @field_validator("input", "output")
    @classmethod
    def _dataset_name(cls, name: str | None) -> str | None:
        return None if name is None else check_dataset_name(name)

    def output_dataset(self, stage: str) -> str:
        """The dataset (or model directory) this stage writes under the run root: `output`, else the stage's name.
        Other stages, `winnow eval`, `winnow status` and the report ask this instead of re-deriving it."""
        if self.WRITES_INTO_INPUT and self.input is not None:
            return self.input
        return self.output or stage

    def check_datasets(self, stage: str, source: str = "config") -> tuple[str, ...]:
        """The datasets this stage touches (input first, if any), after checking them: names are single folders
        under the run root, and a stage never writes over its own input (reshard `{input: pool, output: pool}`
        would otherwise clear the pool's markers before reading it). ConfigError naming the key, before any work."""
        if self.WRITES_INTO_INPUT and self.input is not None:
            return (self.input,)
        output = self.output_dataset(stage)
        try:
            check_dataset_name(output)
        except ValueError as err:
            key = "output" if self.output else "(its name, the default output)"
            raise ConfigError(f"{source}: stages.{stage}.{key}: {err}") from None
        if self.input is not None and self.input == output:
            raise ConfigError(f"{source}: stages.{stage}: output {output!r} is the stage's own input; a stage "
                              "writes a new dataset: choose another `output`")
        return (self.input, output) if self.input is not None else (output,)
