"""The command line as a user runs it: exit codes and messages, `synth`, `status`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def winnow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})


def config(tmp_path: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "cli", "root": str(tmp_path / "run"),
                                 "synthetic": {"pool_size": 30, "hq_size": 3, "test_size": 10},
                                 "stages": {"download": {"source": "synthetic", "output": "pool"}}}))
    return p


def test_synth_builds_the_web_and_status_shows_nothing_started(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    out = winnow("synth", str(cfg))
    assert out.returncode == 0, out.stderr
    web = json.loads((tmp_path / "run" / "web" / "web.json").read_text())
    assert web["counts"]["pool"] == 30 and (tmp_path / "run" / "web" / "pool.parquet").exists()
    status = winnow("status", str(cfg))
    assert status.returncode == 0
    assert "download" in status.stdout and "not started" in status.stdout


def test_config_errors_exit_2_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  download: {thread_count: lots}\n")
    out = winnow("run", str(bad))
    assert out.returncode == 2
    assert "bad.yaml: stages.download.thread_count" in out.stderr and "Traceback" not in out.stderr
    out = winnow("run", str(config(tmp_path)), "--stage", "nope")
    assert out.returncode == 2 and "no stage named 'nope'; stages: download" in out.stderr
    out = winnow("run", str(config(tmp_path)), "--set", "download.tread_count=3")
    assert out.returncode == 2 and "tread_count: unknown key" in out.stderr
