"""Shared fixtures: one local Ray for the whole session, never a cluster picked up from the environment."""

from __future__ import annotations

import os

import pytest

# Tests must never attach to a cluster by accident, and Ray Data's bars only clutter test logs.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    """The session's one local Ray (2 CPUs, ~1 GiB object store)."""
    import ray

    from pipeline.runtime import RayConfig, init_ray

    if not ray.is_initialized():
        init_ray(RayConfig(num_cpus=2, object_store_mb=1024))
    yield ray
    # left running until the session ends: ray.shutdown() at exit is handled by Ray's atexit hook
