"""`winnow submit`, `jobs` and `stop` against a head started with Ray's defaults (`ray start --head`, no
RAY_AUTH_MODE: token authentication on, the token where Ray writes it), and one clear line when winnow cannot use a
cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    c = LocalCluster(cpus_per_node=1, ray_defaults=True).start(nodes=1)
    try:
        yield c
    finally:
        c.stop()


def winnow(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def test_the_head_requires_a_token(head) -> None:
    assert (Path(head.env["HOME"]) / ".ray" / "auth_token").exists()
    assert "RAY_AUTH_MODE" not in head.env


def test_submit_jobs_and_stop_work_with_what_ray_wrote(head, tmp_path: Path) -> None:
    listed = winnow(head.env, "jobs", "--address", head.dashboard_url)
    assert listed.returncode == 0 and "no winnow jobs" in listed.stdout, listed.stderr[-3000:]
    submitted = winnow(head.env, "submit", "--address", head.dashboard_url, "configs/demo.yaml",
                       "--set", f"root={tmp_path / 'run'}", "--set", "synthetic.pool_size=20")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    stopped = winnow(head.env, "stop", "--address", head.dashboard_url, job_id)
    assert stopped.returncode == 0 and stopped.stdout.startswith(job_id), stopped.stderr[-3000:]
    assert job_id in winnow(head.env, "jobs", "--address", head.dashboard_url).stdout


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_client_without_the_token_gets_one_line_saying_what_to_set(head, tmp_path: Path, token: str) -> None:
    env = {**head.env, "HOME": str(tmp_path)}  # a user on another machine: no ~/.ray/auth_token
    if token == "wrong":
        env["RAY_AUTH_TOKEN"] = "0" * 32
    out = winnow(env, "jobs", "--address", head.dashboard_url)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and head.dashboard_url in lines[0] and "RAY_AUTH_TOKEN" in lines[0], lines
    assert os.path.exists(Path(head.env["HOME"]) / ".ray" / "auth_token")
