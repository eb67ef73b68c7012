"""Where the loop runs: what one training process knows about its place, and the in-process launcher.

A `Backend` gives the loop its rank, the world size and its device; wraps the model for data-parallel training;
says which checkpoint a restarted run should resume from; and takes over a checkpoint directory the loop wrote.
`InProcess` is one process and no Ray at all (`scaling.num_workers: 0`: tests, debugging); Ray Train's is
`training.engine.ray_backend`, the only module of `training/` that imports `ray`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import is_remote, upload
from training.engine import checkpoint as ckpt

if TYPE_CHECKING:
    from training.engine.config import EngineConfig
    from training.engine.task import Task


class Backend:
    """One training process's view of the run. The defaults are a single process's."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loop calls: DDP around `model` when there are several workers."""
        return model

    @contextmanager
    def restored(self) -> Iterator[str | None]:
        """A local directory holding the checkpoint the launcher restored (Ray's, after a worker-group restart),
        or None; the loop then looks for the newest complete checkpoint on disk."""
        yield None

    def save(self, folder: str, step: int, metrics: dict) -> None:
        """Take over the checkpoint directory `folder` this rank wrote for `step` (and remove it)."""
        raise NotImplementedError

    def report(self, metrics: dict) -> None:
        """Metrics of a log step without a checkpoint (for a launcher that tracks them)."""


class InProcess(Backend):
    """The whole run in this process: checkpoints are moved (or uploaded) into `<out_dir>/checkpoints` here."""

    def __init__(self, ckpt_root: str, keep: int):
        self.ckpt_root, self.keep = ckpt_root, keep
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def save(self, folder: str, step: int, metrics: dict) -> None:
        place_checkpoint(folder, self.ckpt_root, step, self.keep)


def place_checkpoint(folder: str, root: str, step: int, keep: int) -> str:
    """Move (or upload) a written checkpoint directory into `root`, keep the newest `keep`; return where it went."""
    final = join(root, ckpt.step_dir_name(step))
    fs, path = fs_and_path(final)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if is_remote(final):
        upload(folder, final)  # a half-uploaded directory reads as incomplete: state.json lists every file's size
        shutil.rmtree(folder, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.move(folder, path)
    ckpt.prune_checkpoints(root, keep)
    return final


def run_in_process(task: Task, cfg: EngineConfig, out_dir: str) -> dict:
    """Train in this process; return rank 0's result (see `training.engine.loop.train`)."""
    from training.engine.loop import train

    threads = torch.get_num_threads()
    try:
        return train(task, cfg, out_dir, InProcess(join(out_dir, "checkpoints"), cfg.keep_checkpoints))
    finally:
        torch.set_num_threads(threads)  # the loop sets the training thread count: leave this process's as it was
