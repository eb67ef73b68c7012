"""Fault tolerance: SIGKILL the training worker mid-run; Ray Train restarts the worker group, which resumes from
the last checkpoint, and the run finishes with exactly the configured number of steps."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time

import psutil

from training.contrastive.config import TrainConfig
from training.contrastive.task import ContrastiveTask
from training.engine import fit
from training.engine.checkpoint import latest_checkpoint


def our_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of this session's Ray (other Rays may run on the machine)."""
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    return [p for p in psutil.Process(raylet).children(recursive=True) if p.name() == "ray::RayTrainWorker"]


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_local, shapes, tmp_path):
    steps = 30
    cfg = TrainConfig.model_validate({
        "objective": "siglip", "model": {"name": "tiny-sigmoid-vit"}, "steps": steps, "log_every": 5,
        "checkpoint_every": 10, "data": {"batch_size": 32, "loader_workers": 1, "shuffle_buffer": 128},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1}})
    out = str(tmp_path / "run")
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(fit(ContrastiveTask(cfg, shapes["pool"]), cfg, out)))
    runner.start()

    deadline = time.time() + 120
    while time.time() < deadline and latest_checkpoint(os.path.join(out, "checkpoints")) is None:
        time.sleep(0.1)
    killed_after = latest_checkpoint(os.path.join(out, "checkpoints"))
    assert killed_after is not None, "no checkpoint within 2 minutes"
    workers = our_train_workers()
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    runner.join(timeout=240)

    assert not runner.is_alive()
    killed_at = int(os.path.basename(killed_after).split("_")[1])
    assert killed_at < steps  # it really died mid-run
    assert result["step"] == steps and result["samples_seen"] == steps * 32
    assert len(result["resumed_from"]) == 1 and killed_at <= result["resumed_from"][0] < steps
    with open(os.path.join(out, "metrics.csv")) as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert logged == list(range(5, steps + 1, 5))  # one row per logged step: the resumed run continued the log
