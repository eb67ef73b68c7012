"""Submit a run to a Ray cluster as a Ray job, list winnow's jobs, stop one.

    winnow submit --address http://HEAD:8265 configs/demo.yaml --set root=s3://bucket/runs/demo --follow
    winnow jobs --address http://HEAD:8265
    winnow stop --address http://HEAD:8265 winnow-demo-20261125-101500

The job's `working_dir` is a staged copy of an explicit include-list (the code packages and `configs/`), never the
whole checkout, so a `.env`, key files, run data or a virtualenv lying in it are never uploaded; the cluster needs
winnow's dependencies but not winnow itself (`--pip` names extra requirements). `--set` values that look like
secrets (a key named like a password or token, a URL with credentials) are written into the staged config instead
of the command line, so they appear neither in the job's entrypoint nor in its metadata.

A head started with `ray start --head` may require Ray's token authentication; winnow then sends the token Ray's own
clients use (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`). A cluster that cannot be reached or
refuses the request is one line naming the address and what to set, never a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.config import ConfigError
from pipeline.core.errors import WinnowError
from pipeline.core.layout import is_local
from pipeline.core.paths import REPO_ROOT as REPO
from pipeline.runtime import TOKEN_HINT, use_ray_token_if_present

INCLUDE = ("pipeline", "training", "filtering", "configs", "pyproject.toml")  # what a job needs, nothing else
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".git"}
# Files never uploaded even inside an included folder: environment files, keys, credentials.
SECRET_FILE = re.compile(r"^(\.env(\..+)?|.+\.(pem|key|p12|pfx|jks|kdbx|keystore)|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|"
                         r"\.?credentials(\.\w+)?|\.netrc|\.pypirc|\.?secrets?(\.\w+)?|\.?auth_token|"
                         r"service[-_]account.*\.json)$", re.I)
SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential|auth|private[_-]?key)",
                        re.I)
SECRET_VALUE = re.compile(r"(://[^/@\s:]+:[^/@\s]+@|[?&](token|sig|signature|key|secret|x-amz-signature|"
                          r"x-amz-credential|access_token)=|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{20,}|"
                          r"\bsk-[A-Za-z0-9]{20,}|\bhf_[A-Za-z0-9]{20,})", re.I)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def is_secret_override(text: str) -> bool:
    """Whether `--set KEY=VALUE` looks like it carries a secret (by the key's name or the value's shape)."""
    key, _, value = text.partition("=")
    return bool(SECRET_KEY.search(key.rsplit(".", 1)[-1]) or SECRET_VALUE.search(value))


def staged_files(repo: Path = REPO) -> list[str]:
    """The repo-relative files a job uploads: the include-list, less caches and anything named like a secret."""
    out = []
    for top in INCLUDE:
        base = repo / top
        if base.is_file():
            out.append(top)
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not SECRET_FILE.search(d))
            for name in sorted(files):
                if not SECRET_FILE.search(name) and not name.endswith((".pyc", ".pyo")):
                    out.append(str((Path(folder) / name).relative_to(repo)))
    return out


def _stage(repo: Path, dest: Path, config_rel: str, config_text: str | None) -> None:
    for rel in staged_files(repo):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest / rel)
    if config_text is not None:  # the config with the secret overrides applied (or a config outside `configs/`)
        (dest / config_rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / config_rel).write_text(config_text)


def job_request(config: str, stage: str | None, overrides: list[str], extra_pip: list[str] | None = None,
                staging: Path | None = None, repo: Path = REPO) -> dict:
    """The entrypoint, runtime_env and metadata of a winnow job (validated locally first); with `staging`, the
    working_dir's files are copied there."""
    import yaml

    from pipeline.core.config import load_yaml
    from pipeline.pipeline_config import PipelineConfig, apply_overrides, load_pipeline_config

    cfg = load_pipeline_config(config, overrides)  # a config error stops here, not on the cluster
    # (the loaded config's root is already absolute: check the root as written)
    raw_root = apply_overrides(load_yaml(config), overrides, config).get("root") or PipelineConfig().root
    try:
        rel = Path(config).resolve().relative_to(repo.resolve())
    except ValueError:
        raise ConfigError(f"{config}: the config must live inside the repo ({repo}), which the job's working_dir "
                          "is made from") from None
    if is_local(raw_root) and not Path(raw_root).is_absolute():
        raise ConfigError(
            f"{config}: root {raw_root!r} is a relative local path: on the cluster it would land in the job's "
            "temporary working dir and vanish. Pass --set root=s3://bucket/runs/x (or gs://, or an absolute path "
            "on storage every node mounts)")
    secret = [o for o in overrides if is_secret_override(o)]
    public = [o for o in overrides if o not in secret]
    config_text = None
    if secret or not str(rel).startswith(("configs/", "configs" + os.sep)):
        config_text = yaml.safe_dump(apply_overrides(load_yaml(config), secret, config), sort_keys=False)
    if staging is not None:
        _stage(repo, staging, str(rel), config_text)
    args = ["python", "-m", "pipeline", "run", str(rel)]
    if stage:
        args += ["--stage", stage]
    for o in public:
        args += ["--set", o]
    runtime_env: dict = {"working_dir": str(staging or repo),
                         "env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}}
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    hidden = [f"{o.partition('=')[0]}=<hidden>" for o in secret]
    return {
        "entrypoint": shlex.join(args),
        "runtime_env": runtime_env,
        "metadata": {"winnow": "1", "config": str(rel), "stage": stage or "", "name": cfg.name,
                     "root": cfg.root if not SECRET_VALUE.search(cfg.root) else "<hidden>",
                     "overrides": " ".join([*public, *hidden])},
        "submission_id": f"winnow-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
    }


@contextmanager
def talking_to(address: str) -> Iterator[None]:
    """Turn a failure to reach or be accepted by the cluster into one WinnowError line naming the address."""
    try:
        yield
    except WinnowError:
        raise
    except Exception as err:  # noqa: BLE001 - requests, Ray's AuthenticationError, RuntimeError: all one line
        raise WinnowError(_failure_line(address, err)) from None


def _failure_line(address: str, err: BaseException) -> str:
    text = " ".join(str(err).split())
    name = type(err).__name__
    if name == "AuthenticationError" or re.search(r"\b40[13]\b|Unauthorized|Forbidden", text):
        what = "has no valid token for it" if re.search(r"403|Forbidden|invalid", text) else "sent no token"
        return f"the Ray cluster at {address} requires token authentication and winnow {what}: {TOKEN_HINT}"
    if isinstance(err, ConnectionError) or re.search(r"connect|refused|resolve|timed out", text, re.I):
        return (f"cannot reach the Ray cluster at {address}: is the head running, and is --address its dashboard "
                "(http://HEAD:8265, the address `ray start --head` prints for `ray job submit`)?")
    return f"the Ray cluster at {address} refused the request: {text[:300]}"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    use_ray_token_if_present()
    with talking_to(address):
        return JobSubmissionClient(address)


def submit(address: str, config: str, stage: str | None, overrides: list[str], follow: bool = False,
           extra_pip: list[str] | None = None) -> int:
    staging = Path(tempfile.mkdtemp(prefix="winnow-job-"))
    try:
        req = job_request(config, stage, overrides, extra_pip, staging=staging)
        client = _client(address)
        with talking_to(address):
            job_id = client.submit_job(**req)  # uploads the staged working_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"submitted {job_id}: {req['entrypoint']}")
    print(f"  logs:   winnow jobs --address {address}   |   ray job logs --address {address} {job_id} --follow")
    if not follow:
        return 0
    with talking_to(address):
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
    client = _client(address)
    with talking_to(address):
        jobs = client.list_jobs()
    for job in jobs:
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
    client = _client(address)
    with talking_to(address):
        stopped = client.stop_job(job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
