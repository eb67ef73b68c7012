"""The engine's typed config: how long to train, the optimizer and its schedule, how often to log and checkpoint,
and where the workers run. Pydantic only: importing this never loads torch.

A task's own config extends `EngineConfig` with its model, data and evaluation sections (e.g.
`training.contrastive.config.TrainConfig`), so a run's YAML keeps one flat set of top-level keys.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel


class OptimConfig(StrictModel):
    """AdamW on a linear-warmup + cosine schedule, with gradient clipping and accumulation."""

    lr: float = Field(5e-4, gt=0, description="peak learning rate (tiny SigLIPs stall at 2e-3 on the shapes data)")
    min_lr: float = Field(0.0, ge=0, description="cosine schedule floor")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = Field(1.0, description="max global grad norm; None = no clipping")
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")


class ScalingConfig(StrictModel):
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 = run in this process (tests, debugging)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads; default = CPUs per worker")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    min_workers: int | None = Field(
        None, ge=1, description="elastic: a worker group restarted after a failure (a lost node) may be smaller, "
                                "down to this many workers, when the cluster no longer fits num_workers; None = "
                                "always num_workers (a restart waits for the resources)")

    room_timeout: float = Field(
        600.0, gt=0, description="seconds the cluster may have room for fewer than min_workers (else num_workers) "
                                 "workers, e.g. after a lost node, before the run fails, resumable from its last "
                                 "checkpoint, instead of waiting for nodes that may never come")

    @model_validator(mode="after")
    def _min_at_most_num(self) -> ScalingConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"scaling.min_workers ({self.min_workers}) is more than num_workers "
                             f"({self.num_workers})")
        return self


class EngineConfig(StrictModel):
    """What the engine needs, whatever the task: steps, optimizer, checkpoints, logging, workers."""

    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    steps: int = Field(600, ge=1, description="optimizer steps")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_bad_steps: int = Field(5, ge=1, description="consecutive NaN/inf steps that stop the run")
    seed: int = Field(0, description="seeds the model's initial weights (the same on every worker)")
