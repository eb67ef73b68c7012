"""Ray Train: run the loop on N workers (gloo on CPU, NCCL on GPU) with Ray's checkpoints and restarts.

This is the only module of `training/` that imports `ray`. Checkpoints land in `<out_dir>/checkpoints/step_*`
(Ray Train's storage is `<out_dir>`, its run name `checkpoints`), so a restarted worker group resumes from the
newest one (`scaling.max_failures`), and the same command run again resumes a stopped run. The output directory
must be visible to every worker: a local path on one machine; on a cluster, object storage (`s3://`, `gs://`: Ray
Train stores checkpoints through pyarrow's filesystem, rank 0 stages its other files locally and uploads them, see
`training.engine.run_dir`) or a shared mount.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the default in Ray 2.60; V1 lacks what we use

import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
import torch  # noqa: E402

from pipeline.core.storage import arrow_filesystem  # noqa: E402
from training.engine import checkpoint as ckpt  # noqa: E402
from training.engine.backend import Backend  # noqa: E402

if TYPE_CHECKING:
    from training.engine.config import EngineConfig
    from training.engine.task import Task


class RayWorker(Backend):
    """A Ray Train worker's view of the run; Ray set up the process group and the device."""

    def __init__(self):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model, move_to_device=False) if self.world > 1 else model

    @contextmanager
    def restored(self) -> Iterator[str | None]:
        found = ray.train.get_checkpoint()  # after a worker-group restart, or a rerun of a run Ray knows
        if found is None:
            yield None
            return
        with found.as_directory() as path:
            yield path

    def save(self, folder: str, step: int, metrics: dict) -> None:
        """Every rank hands its directory over; Ray merges them into `checkpoints/step_*` and keeps the newest."""
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=ckpt.step_dir_name(step))
        shutil.rmtree(folder, ignore_errors=True)

    def report(self, metrics: dict) -> None:
        ray.train.report(metrics)


def train_worker(config: dict) -> dict:
    """Ray Train's `train_loop_per_worker`: the task arrives pickled in `config`."""
    from pipeline.core.logs import quiet_worker_logs
    from training.engine.loop import train

    # Ray Train configured this worker's root logger at INFO after our start-up hook ran; its per-step "Reporting
    # training result" lines and model-loading chatter would bury the progress bar.
    quiet_worker_logs()
    return train(config["task"], config["cfg"], config["out_dir"], RayWorker())


def run_on_ray(task: Task, cfg: EngineConfig, out_dir: str) -> dict:
    """Train on `cfg.scaling.num_workers` Ray Train workers (Ray must be initialised); return rank 0's result."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = cfg.scaling
    storage_fs, storage_path = arrow_filesystem(out_dir)  # Ray Train's view of the same storage as fsspec's
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"task": task, "cfg": cfg, "out_dir": out_dir},
        # (min, max): Ray Train's elastic scaling restarts a failed group with as many workers as the cluster fits
        scaling_config=ScalingConfig(num_workers=sc.num_workers if sc.min_workers is None
                                     else (sc.min_workers, sc.num_workers), use_gpu=sc.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if sc.gpus_per_worker > 0 else "gloo"),
        run_config=RunConfig(name="checkpoints", storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    return trainer.fit().return_value or {}
