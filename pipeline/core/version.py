"""The code version recorded in manifests: the git commit when run from a checkout, else the package version."""

from __future__ import annotations

import functools
import subprocess

from pipeline.core.paths import REPO_ROOT


@functools.cache
def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("winnow")
    except PackageNotFoundError:
        return "unknown"
