"""`winnow submit`: the job uploads an include-list (every source file, never a secret or data), keeps secret
`--set` values out of what the cluster shows, and turns a cluster it cannot use into one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.jobs import is_secret_override, job_request, staged_files

REPO = Path(__file__).resolve().parents[4]


def test_the_job_uploads_every_source_file() -> None:
    tracked = subprocess.run(["git", "ls-files", "pipeline", "training", "filtering", "configs", "pyproject.toml"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 50
    assert sorted(set(tracked) - set(staged_files(REPO))) == []


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A checkout as a user has it: the code, and beside it (and inside it) what must never leave the machine."""
    repo = tmp_path / "repo"
    for top in ("pipeline", "training", "filtering", "configs"):
        shutil.copytree(REPO / top, repo / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", repo)
    for secret in (".env", ".env.production", "id_rsa", "gcp-key.pem", "credentials.json", "runs/demo/pool/x.tar",
                   "data/urls.parquet", ".venv/bin/python", "configs/.env", "configs/service-account.json",
                   "pipeline/secrets.yaml", ".aws/credentials", "notes/token.txt"):
        (repo / secret).parent.mkdir(parents=True, exist_ok=True)
        (repo / secret).write_text("AKIAIOSFODNN7EXAMPLE")
    return repo


def test_the_job_never_uploads_keys_env_files_or_data(checkout: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    root = str(tmp_path / "run")
    req = job_request(str(checkout / "configs" / "demo.yaml"), None, [f"root={root}"], staging=staging,
                      repo=checkout)
    uploaded = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert req["runtime_env"]["working_dir"] == str(staging)
    assert uploaded == sorted(staged_files(checkout))
    assert "configs/demo.yaml" in uploaded and "pipeline/__main__.py" in uploaded
    assert not [p for p in uploaded if "AKIAIOSFODNN7EXAMPLE" in (staging / p).read_text(errors="ignore")]


@pytest.mark.parametrize(("override", "secret"), [
    ("download.url_list=https://cdn.example/list.parquet?X-Amz-Signature=abcdef0123", True),
    ("download.url_list=https://user:hunter2@cdn.example/list.parquet", True),
    ("score.api_key=sk-abcdefghijklmnopqrstuvwxyz", True),
    ("download.thread_count=16", False),
    ("root=s3://bucket/runs/x", False),
])
def test_secret_looking_overrides_are_recognised(override: str, secret: bool) -> None:
    assert is_secret_override(override) is secret


def test_secret_overrides_stay_out_of_the_entrypoint_and_metadata(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    signed = "https://cdn.example/list.parquet?X-Amz-Signature=0123456789abcdef"
    req = job_request(str(REPO / "configs" / "demo.yaml"), "download",
                      [f"root={tmp_path / 'run'}", "download.thread_count=8", f"download.url_list={signed}",
                       "download.source=urls"], staging=staging)
    shown = req["entrypoint"] + json.dumps(req["metadata"])
    assert "0123456789abcdef" not in shown
    assert "download.thread_count=8" in req["entrypoint"] and "download.url_list=<hidden>" in shown
    staged = (staging / "configs" / "demo.yaml").read_text()
    assert signed in staged  # the job still gets it, inside its uploaded config


def winnow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", [["jobs"], ["stop", "winnow-x"],
                                     ["submit", "configs/demo.yaml", "--set", "root=/tmp/winnow-nowhere"]])
def test_an_unreachable_cluster_is_one_line_naming_it(command: list[str]) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = winnow(command[0], "--address", address, *command[1:])
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert address in lines[0] and "cannot reach" in lines[0]
