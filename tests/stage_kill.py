"""Kill a stage's driver mid-run: start it as a script in its own process group (attached to the session's Ray),
wait until its first output shard is marked done, then SIGKILL the group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_first_shard(script: str, args: list[str], ds, folder: str, workdir: Path,
                           timeout: float = 180) -> tuple[dict, str]:
    """(the done markers in `ds`'s `folder` when the run was killed, the end of its stderr)."""
    path = workdir / "kill_stage.py"
    path.write_text(script)
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, str(path), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not ds.done_shards(folder) and proc.poll() is None:
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return ds.done_shards(folder), err.decode()[-2000:]
