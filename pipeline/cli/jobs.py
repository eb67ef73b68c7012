"""Submit a run to a Ray cluster as a Ray job, list winnow's jobs, stop one.

    winnow submit --address http://HEAD:8265 configs/demo.yaml --set root=s3://bucket/runs/demo --follow
    winnow jobs --address http://HEAD:8265
    winnow stop --address http://HEAD:8265 winnow-demo-20261125-101500

The repo is the job's `working_dir` (Ray uploads it), so the cluster needs winnow's dependencies but not winnow
itself; `--pip` names extra requirements for the job's environment. On the cluster the driver attaches to the
cluster it was submitted to (Ray sets RAY_ADDRESS for the job).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from pipeline.core.config import ConfigError
from pipeline.core.layout import is_local
from pipeline.core.paths import REPO_ROOT as REPO

EXCLUDES = [".venv", "runs", ".git", "bench/out", "**/__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
            "*.egg-info", "web"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def job_request(config: str, stage: str | None, overrides: list[str], extra_pip: list[str] | None = None) -> dict:
    """The entrypoint, runtime_env and metadata of a winnow job (validated locally first)."""
    from pipeline.core.config import load_yaml
    from pipeline.pipeline_config import PipelineConfig, apply_overrides, load_pipeline_config

    cfg = load_pipeline_config(config, overrides)  # a config error stops here, not on the cluster
    # (the loaded config's root is already absolute: check the root as written)
    raw_root = apply_overrides(load_yaml(config), overrides, config).get("root") or PipelineConfig().root
    cfg_path = Path(config).resolve()
    try:
        rel = cfg_path.relative_to(REPO)
    except ValueError:
        raise ConfigError(f"{config}: the config must live inside the repo ({REPO}), which is uploaded as the "
                          "job's working_dir") from None
    if is_local(raw_root) and not Path(raw_root).is_absolute():
        raise ConfigError(
            f"{config}: root {raw_root!r} is a relative local path: on the cluster it would land in the job's "
            "temporary working dir and vanish. Pass --set root=s3://bucket/runs/x (or gs://, or an absolute path "
            "on storage every node mounts)")
    args = ["python", "-m", "pipeline", "run", str(rel)]
    if stage:
        args += ["--stage", stage]
    for o in overrides:
        args += ["--set", o]
    runtime_env: dict = {"working_dir": str(REPO), "excludes": EXCLUDES,
                         "env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}}
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    return {
        "entrypoint": shlex.join(args),
        "runtime_env": runtime_env,
        "metadata": {"winnow": "1", "config": str(rel), "stage": stage or "", "name": cfg.name, "root": cfg.root},
        "submission_id": f"winnow-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
    }


def submit(address: str, config: str, stage: str | None, overrides: list[str], follow: bool = False,
           extra_pip: list[str] | None = None) -> int:
    req = job_request(config, stage, overrides, extra_pip)
    client = _client(address)
    job_id = client.submit_job(**req)
    print(f"submitted {job_id}: {req['entrypoint']}")
    print(f"  logs:   winnow jobs --address {address}   |   ray job logs --address {address} {job_id} --follow")
    if not follow:
        return 0
    return 0 if follow_job(client, job_id) == "SUCCEEDED" else 1


def follow_job(client, job_id: str, poll_s: float = 2.0, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; return its final status."""
    shown = 0
    while True:
        status = _status_name(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in TERMINAL:
            print(f"\njob {job_id}: {status}", file=out)
            return status
        time.sleep(poll_s)


def _status_name(status) -> str:
    return str(getattr(status, "value", status))


def list_jobs(address: str) -> int:
    from pipeline.core.tables import format_table

    rows = []
    for job in _client(address).list_jobs():
        meta = job.metadata or {}
        if meta.get("winnow") != "1":
            continue
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        rows.append([job.submission_id, _status_name(job.status),
                     started, meta.get("config", ""), meta.get("stage", "") or "all", meta.get("root", "")])
    print(format_table(rows, header=["job", "status", "started", "config", "stage", "root"]) if rows
          else "no winnow jobs on this cluster")
    return 0


def stop(address: str, job_id: str) -> int:
    stopped = _client(address).stop_job(job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
