"""`winnow run`'s terminal shows winnow's progress and summaries; Ray Data's operator progress, its memory advice,
Ray's notices (the driver's own C++ core included) and open_clip's "initialized randomly" for models winnow builds
on purpose go to the run's log file, whose path is printed once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from curation_testdata import sample, write_pool

REPO = Path(__file__).resolve().parents[4]
RAY_NOISE = re.compile(r"logging_progress|streaming_executor|Running Dataset|Execution plan of Dataset|"
                       r"issue_detector|used up to .* of memory|Token authentication|PlacementGroupCleaner|"
                       r"core_worker\.cc|constructor arguments in the object store|No pretrained weights loaded")


# A model trained from scratch in the driver (open_clip warns it starts random), then scoring in a model actor pool
TRAIN = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-clip-rn"}, "objective": "clip", "steps": 2,
         "log_every": 1, "checkpoint_every": 2, "data": {"batch_size": 8, "loader_workers": 0, "shuffle_buffer": 8},
         "scaling": {"num_workers": 0, "torch_threads": 1}, "eval": {"synthetic_test": False}}


def test_ray_data_progress_goes_to_the_run_log_not_the_terminal(ray_local, tmp_path: Path) -> None:
    write_pool(tmp_path / "root", "pool", [[sample(i) for i in range(8)], [sample(8 + i) for i in range(8)]])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "quiet", "root": str(tmp_path / "root"),
                                   "stages": {"train": TRAIN, "score": {"input": "pool", "batch_size": 4,
                                                                        "model_from": "train"}}},
                                  sort_keys=False))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "RAY_DATA_DISABLE_PROGRESS_BARS": "0"}  # as a user's terminal has them
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    terminal = out.stdout + out.stderr
    assert out.returncode == 0, terminal[-3000:]
    assert "== stage score" in out.stdout and "16 (16 ok" in out.stdout  # winnow's own summary
    assert "== stage train" in out.stdout
    noise = [line for line in terminal.splitlines() if RAY_NOISE.search(line)]
    assert noise == []
    logs = re.findall(r"^log: (.+)$", out.stdout, re.M)
    assert len(logs) == 1 and logs[0].startswith(str(tmp_path / "root" / "_logs"))
    text = Path(logs[0]).read_text()
    assert re.search(r"Execution plan of Dataset|Running Dataset|streaming_executor", text)  # kept, not lost
