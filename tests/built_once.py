"""Session fixtures built once per test run instead of once per pytest-xdist worker.

`make test` runs two workers, and a session fixture runs in each worker that uses it: the tiny models the tests
train in-process (`encoders`, `trained_filter`, `demo_models`) were trained twice, ~50 s of the suite's two cores.
`built_once` builds into a folder beside the workers' own temp dirs under a file lock; the other worker waits for it
and loads what it returned. What it builds must be read-only to the tests.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

T = TypeVar("T")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """`build(folder)` once per test run (its result pickled beside its files); later callers get the result."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is a folder of the run's own
        base = base.parent
    folder = base / f"built-once-{name}"
    result = folder / "result.pickle"
    with FileLock(f"{folder}.lock"):
        if result.exists():
            return pickle.loads(result.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way (a half-trained model) starts over
        folder.mkdir(parents=True)
        value = build(folder)
        result.write_bytes(pickle.dumps(value))
        return value
