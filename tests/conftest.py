"""Shared fixtures: one local Ray for the whole session (per pytest-xdist worker: `make test` runs two test files
at a time), never a cluster picked up from the environment."""

from __future__ import annotations

import os
import socket
import uuid
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


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# S3 tests talk to a moto server on loopback, never to AWS. Ray workers inherit the environment the session's Ray
# started with, so the endpoint and fake credentials are set here, before anything starts Ray; the server itself
# starts only when a test asks for `s3_endpoint`. fsspec passes FSSPEC_S3_* variables to s3fs; pyarrow and boto read
# AWS_ENDPOINT_URL.
S3_ENDPOINT = f"http://127.0.0.1:{_free_loopback_port()}"
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)
os.environ.update({"FSSPEC_S3_ENDPOINT_URL": S3_ENDPOINT, "AWS_ENDPOINT_URL": S3_ENDPOINT,
                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"})
import fsspec.config  # noqa: E402  (fsspec reads FSSPEC_* variables when imported: read them again if it was)

fsspec.config.set_conf_env(fsspec.config.conf)


TESTS = Path(__file__).resolve().parent


def _test_path() -> str:
    dirs = {str(p.parent) for p in TESTS.rglob("*.py")} | {str(TESTS.parent)}
    return os.pathsep.join(sorted(dirs) + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


LOW_PRIORITY = 14  # the session's Ray workers' nice value (ray_local)


@pytest.fixture(scope="session")
def ray_local():
    """The session's one local Ray (2 CPUs, ~1 GiB object store)."""
    import ray

    from pipeline.runtime import RayConfig, init_ray

    if not ray.is_initialized():
        # Workers must import test modules (pytest puts each test file's folder on sys.path, by basename).
        # Workers at low priority, about as Ray's own 15 has them: the suite's two pytest processes then keep the
        # CPU for their in-driver work (with every Ray at nice 0 the suite took 17:49 against 15:17, and a cluster
        # test's fast URLs timed out). 14, not 15, so that tests/ray/pipeline/test_runtime.py sees the configured
        # value, not Ray's default, reach the workers.
        init_ray(RayConfig(num_cpus=2, object_store_mb=1024, worker_niceness=LOW_PRIORITY),
                 runtime_env={"env_vars": {"PYTHONPATH": _test_path()}})
    yield ray
    # left running until the session ends: ray.shutdown() at exit is handled by Ray's atexit hook


@pytest.fixture(scope="session")
def ray_local_niceness() -> int:
    """The nice value `ray_local` starts its workers with."""
    return LOW_PRIORITY


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible server (moto) on the loopback port that S3_ENDPOINT names, for the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    host, port = S3_ENDPOINT.removeprefix("http://").split(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the loopback S3 server: `s3://<name>`."""
    import fsspec

    name = f"winnow-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


# The longest test files first (seconds per file, call + setup, clean-clone `make test` on 2 cores, 2026-12-08), so
# that pytest-xdist (`--dist loadfile --no-loadscope-reorder`) hands them out before the many short ones, which then
# fill both workers to the end: by default xdist orders files by their number of tests, which left the one-test S3
# run (~2 min) alone on one worker at the end of the suite while the other sat idle.
LONGEST_FIRST = (
    "tests/e2e/test_node_loss.py",  # 270
    "tests/e2e/test_cluster.py",  # 185
    "tests/e2e/test_jobs_on_cluster.py",  # 140
    "tests/ray/pipeline/test_s3_storage.py",  # 130
    "tests/ray/pipeline/stages/test_caption_stage.py",  # 130
    "tests/ray/pipeline/stages/test_train_diffusion_stage.py",  # 100
    "tests/ray/pipeline/stages/test_score_stage.py",  # 85
    "tests/ray/pipeline/execution/test_actor_pool.py",  # 75
    "tests/unit/training/contrastive/test_contrastive_objectives.py",  # 70
    "tests/ray/training/engine/test_new_task_two_workers.py",  # 60
    "tests/ray/pipeline/test_reproducible.py",  # 60
    "tests/ray/pipeline/stages/test_train_clip_stage.py",  # 50
    "tests/ray/training/generative/test_flow_two_workers.py",  # 36
    "tests/ray/pipeline/test_fashion_world_pipeline.py",  # 35
)


def pytest_collection_modifyitems(config, items) -> None:
    """Longest files first; the rest keep their collection order (the sort is stable)."""
    rank = {str(TESTS.parent / path): i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))
