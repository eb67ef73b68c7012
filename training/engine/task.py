"""The contract between the engine and what it trains.

The engine (`training.engine.loop`) owns everything that is the same for every model: steps, the learning-rate
schedule, gradient accumulation, autocast, the non-finite guard, clipping, logging, checkpoints, resume, periodic
evaluation and where the workers run. A task owns the rest: which network, which data, which loss, how to evaluate
it and which files it leaves behind. A new objective or generator is one `Task` subclass; the engine never asks
which one it is running.

A task's life, in the order the engine calls it:

    driver, once:      prepare(out_dir)                 e.g. build a vocabulary; the task is then pickled to workers
    each worker:       setup(rank, world, device)       -> the module to train (engine seeds first, moves it to
                                                           `device`, builds AdamW from param_groups, wraps DDP)
                       load_extra_state(tensors)        on resume, what extra_state() saved
                       batches(rank, world, seed)       -> an endless iterator of dicts of tensors
    each step:         on_step_start(step, total)
                       loss(model, batch)               once per micro-batch, under autocast
                       after_update(step)               after an optimizer step that was taken
                       step_metrics()                   at log steps, merged into the logged row
    rank 0:            evaluate() -> dict               every `eval_every` steps and after the last step
    each checkpoint:   extra_state() -> tensors         rank 0, saved next to the weights
    rank 0, at the end: export(run, evaluation) -> dict  final files; the dict joins `fit`'s result

A minimal task is `setup`, `batches` and `loss`; `tests/training_mean_colour.py` is one in a single file. A task
lives with its kind: `training/contrastive/`, `training/generative/`, or `training/tasks/` for any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from training.engine.run_dir import RunDir

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Task:
    """Base class of what the engine trains. Override `setup`, `batches` and `loss`; the rest has defaults."""

    name: str = "train"  # the progress bar's label and the `task` recorded in each checkpoint's state.json
    precision: Precision = "auto"  # autocast dtype; auto = bf16 on a CUDA device that supports it, else fp32
    batch_size: int = 1  # samples per worker per micro-batch: the engine counts samples_seen with it
    eval_every: int = 0  # evaluate every N steps on rank 0 (0 = only after the last step)

    # --- driver side --------------------------------------------------------------------------------------------
    def prepare(self, out_dir: str) -> None:
        """Before any worker starts (once per `fit`). Whatever it stores on `self` reaches the workers, since the
        task object is pickled to them; fail here on a bad config, before workers start."""

    # --- every worker -------------------------------------------------------------------------------------------
    def setup(self, rank: int, world: int, device: torch.device) -> nn.Module:
        """Build and return the module to train. The engine has seeded torch with `seed` (identical initial
        weights on every rank) and moves the module to `device` afterwards; anything else the task keeps (an EMA
        copy, an evaluator) it places itself. Keep a reference: `evaluate` and `export` use the bare module."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """AdamW's parameter groups. Default: no decay on tensors of fewer than two dims (gains, biases, scalars)."""
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]

    def batches(self, rank: int, world: int, seed: int) -> Iterator[dict]:
        """An endless iterator of micro-batches for this rank: dicts whose tensors the engine moves to the device.
        An optional `skipped` entry (an int or a tensor summed) counts samples the reader dropped; the engine
        removes it and logs it. `seed` differs on every (re)start, so a resumed run does not replay its first
        batches; it is the same on every rank."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> dict:
        """`{"loss": scalar tensor, ...}` for one micro-batch. `model` is what `setup` returned, wrapped in DDP
        when there are several workers: call it (not the bare module) so gradients are averaged."""
        raise NotImplementedError

    # --- hooks around a step ------------------------------------------------------------------------------------
    def on_step_start(self, step: int, total: int) -> None:
        """Before step `step` (0-based) of `total`, e.g. switch a schedule-dependent setting."""

    def after_update(self, step: int) -> None:
        """After the optimizer stepped (not after a skipped step), e.g. clamp a parameter, update an EMA."""

    def step_metrics(self) -> dict[str, float]:
        """Extra numbers for the log row of a log step, e.g. a learnable temperature."""
        return {}

    # --- rank 0: evaluation and the final files -----------------------------------------------------------------
    def evaluate(self) -> dict:
        """Evaluate the current weights (rank 0 only; the other workers wait at their next step). The result of
        the last call is the run's `eval.json` and `fit`'s `eval`."""
        return {}

    def eval_metrics(self, result: dict) -> dict[str, float]:
        """The numbers of an `evaluate` result for the metrics log: `{"group": {"k": v}}` -> `{"group_k": v}`."""
        return {f"{group}_{k}": v for group, d in result.items() if isinstance(d, dict) for k, v in d.items()
                if isinstance(v, float)}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors to save in each step checkpoint besides the module and optimizer (e.g. EMA weights)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """On resume, after `setup`: what `extra_state` returned when the checkpoint was written (on CPU; empty for
        a checkpoint without any)."""

    def export(self, run: RunDir, evaluation: dict) -> dict:
        """After the last step and evaluation, on rank 0: write the final files into `run.path(...)` (the engine
        uploads the folder when the output is remote, and writes eval.json and curves.png itself). Returns entries
        for `fit`'s result, e.g. `{"weights": join(run.url, "model.pt")}`."""
        return {}
