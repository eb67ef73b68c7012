"""Shared bits of the benchmarks: the machine line, timing, and the machine-readable RESULT line."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from contextlib import contextmanager


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(li for li in open("/proc/meminfo") if li.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            gpu = f", GPU {out.stdout.strip().splitlines()[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}{gpu}, Python {platform.python_version()}"


@contextmanager
def timed(into: dict, key: str):
    t0 = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t0


def result_line(metric: str, value: float, op: str, target: float) -> str:
    return f"RESULT {metric}={value:.3f} target{op}{target}"


def require_world(world: str, fashion_data: str | None = None) -> None:
    """Exit with what to do when a bench's world cannot be built here: the fashion world needs its photos
    (`make fashion-data`; a clean clone has only the tests' small extract)."""
    import sys

    if world != "fashion":
        return
    from pipeline.synthetic.fashion import FashionDataMissing, load, resolve_source

    try:
        load(resolve_source(fashion_data))
    except FashionDataMissing as e:
        sys.exit(f"bench: {e}")


def end_embedded_run(base, keep: bool) -> None:
    """After a bench that ran stages in this process: shut down the embedded Ray they started (nothing else) and
    remove the run root unless the user asked to keep it (`--workdir`)."""
    import shutil

    import ray

    if ray.is_initialized():
        ray.shutdown()
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
