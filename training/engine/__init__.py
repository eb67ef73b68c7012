"""The training engine: steps, schedule, accumulation, autocast, the non-finite guard, checkpoints, resume, logging
and evaluation for any `Task` (`training.engine.task`), in this process or on Ray Train workers.

    from training.engine import fit
    fit(ContrastiveTask(cfg, shards), cfg, out_dir="runs/demo/encoder")

`fit` runs in this process when `cfg.scaling.num_workers == 0` (no Ray imported at all), else on Ray Train
workers (Ray must be initialised). The run directory holds `checkpoints/step_*`, `metrics.csv`, `tb/`,
`curves.png`, `eval.json`, `resumes.json` (after a resume) and the task's own files; running the same call again
resumes from the newest complete checkpoint. This module imports nothing heavy, so configs can import
`training.engine.config` cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.engine.config import EngineConfig
    from training.engine.task import Task


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def fit(task: Task, cfg: EngineConfig, out_dir: str) -> dict:
    """Train (or resume) `task` in `out_dir` (a local path or an fsspec URL). Returns `step`, `resumed_from`,
    `samples_seen`, `eval`, `seconds`, `last_checkpoint`, `metrics` (the last reported) and whatever the task's
    `export` returned (e.g. `weights`). Raises `TrainingDiverged` after `cfg.max_bad_steps` bad steps in a row."""
    import os
    import time

    from pipeline.core.layout import join, read_json
    from pipeline.core.storage import exists, is_remote, local_path, remove

    if not is_remote(out_dir):
        out_dir = os.path.abspath(local_path(out_dir))
        os.makedirs(out_dir, exist_ok=True)
    stale = join(out_dir, "diverged.json")
    if exists(stale):
        remove(stale)
    task.prepare(out_dir)
    t0 = time.time()
    if cfg.scaling.num_workers == 0:
        from training.engine.backend import run_in_process

        returned = run_in_process(task, cfg, out_dir)
    else:
        from training.engine.ray_backend import run_on_ray

        returned = run_on_ray(task, cfg, out_dir)
    seconds = time.time() - t0
    if exists(stale):
        raise TrainingDiverged(read_json(stale)["error"])
    from training.engine.checkpoint import latest_checkpoint

    last = latest_checkpoint(join(out_dir, "checkpoints"))
    state = read_json(join(last, "state.json"))
    resumes_path = join(out_dir, "resumes.json")
    # (a run resumed before resumes.json recorded world sizes lists bare steps)
    resumes = [r if isinstance(r, dict) else {"step": r, "world": None}
               for r in (read_json(resumes_path) if exists(resumes_path) else [])]
    return {"step": state["step"], "resumed_from": [r["step"] for r in resumes], "resumes": resumes,
            "world": state.get("world"),
            "samples_seen": state["samples_seen"], "eval": read_json(join(out_dir, "eval.json")),
            "seconds": round(seconds, 2), "last_checkpoint": last, "metrics": returned.get("metrics", {}),
            **returned.get("export", {})}
