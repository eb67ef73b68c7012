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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the default in Ray 2.60; V1 lacks what we use

import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
import torch  # noqa: E402

from pipeline.core.errors import WinnowError  # noqa: E402
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
    need = sc.min_workers or sc.num_workers
    return _fit_watched(trainer, need, resources, sc.room_timeout, out_dir).return_value or {}


class TrainingStalled(WinnowError):
    """The cluster had no room for the smallest allowed worker group for `scaling.room_timeout` seconds."""


def workers_that_fit(resources: dict[str, float]) -> int:
    """Workers of this size the live nodes could host at once (each worker on one node), busy or not."""
    n = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            n += min(int(have.get(k, 0.0) // v) for k, v in resources.items() if v > 0)
    return n


def _fit_watched(trainer, need: int, resources: dict[str, float], room_timeout: float, out_dir: str):
    """`trainer.fit()`, unless the cluster cannot host `need` workers for `room_timeout` seconds in a row: Ray Train
    would wait for nodes forever (an elastic group below its minimum waits; a fixed group's start times out and is
    retried without limit), so the run fails here, resumable from its last checkpoint. `fit` runs in a daemon thread
    that is left behind; the driver's exit ends the run's actors."""
    done: dict = {}

    def target() -> None:
        try:
            done["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the caller's thread
            done["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="ray-train-fit")
    thread.start()
    short_since = None
    while thread.is_alive():
        thread.join(timeout=2.0)
        if not thread.is_alive():
            break
        fit = workers_that_fit(resources)
        if fit >= need:
            short_since = None
        elif short_since is None:
            short_since = time.monotonic()
        elif time.monotonic() - short_since > room_timeout:
            last = ckpt.latest_checkpoint(out_dir.rstrip("/") + "/checkpoints")
            resume = f"from {last.rstrip('/').rsplit('/', 1)[-1]}" if last else "from its last checkpoint, if any"
            raise TrainingStalled(
                f"training stopped: the cluster has had room for {fit} worker(s) of {resources} for over "
                f"{room_timeout:.0f} s (scaling.room_timeout), fewer than the {need} it needs (scaling.min_workers, "
                f"else num_workers; a node was lost?); run the same command again once it has room: it resumes "
                f"{resume}")
    if "error" in done:
        raise done["error"]
    return done["result"]
