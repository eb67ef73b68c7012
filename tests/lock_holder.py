"""Another process holding a dataset's lock, for the tests of runs that must wait for it or stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hold_in_another_process(dataset: str, seconds: float) -> subprocess.Popen:
    """A process that takes the dataset's lock, says so, holds it `seconds`, then exits (releasing it)."""
    code = (f"import time; from pipeline.core.locks import lock_dataset\n"
            f"with lock_dataset({dataset!r}):\n    print('held', flush=True); time.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc
