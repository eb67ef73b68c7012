"""Shared fixtures: one local Ray for the whole session, never a cluster picked up from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never attach to a cluster by accident, and Ray Data's bars only clutter test logs.
os.environ.pop("RAY_ADDRESS", None)
# Tests talk to loopback only: Ray would otherwise advertise the host's own IP instead of 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


TESTS = Path(__file__).resolve().parent


def _test_path() -> str:
    dirs = {str(p.parent) for p in TESTS.rglob("*.py")} | {str(TESTS.parent)}
    return os.pathsep.join(sorted(dirs) + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


@pytest.fixture(scope="session")
def ray_local():
    """The session's one local Ray (2 CPUs, ~1 GiB object store)."""
    import ray

    from pipeline.runtime import RayConfig, init_ray

    if not ray.is_initialized():
        # Workers must import test modules (pytest puts each test file's folder on sys.path, by basename).
        init_ray(RayConfig(num_cpus=2, object_store_mb=1024), runtime_env={"env_vars": {"PYTHONPATH": _test_path()}})
    yield ray
    # left running until the session ends: ray.shutdown() at exit is handled by Ray's atexit hook
