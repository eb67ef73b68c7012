"""pyproject's dependency floors leave out releases with known vulnerabilities that winnow's use would reach."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
# package -> the first release with the fix, and why it matters here
FIXED_IN = {
    "torch": ("2.6.0", "torch.load(weights_only=True) could still run code (CVE-2025-32434): checkpoints"),
    "torchvision": ("0.21.0", "the release paired with torch 2.6"),
    "pillow": ("10.3.0", "libwebp heap overflow (CVE-2023-4863, 10.0.1), ImageMath eval (CVE-2023-50447), "
                         "_imagingcms overflow (CVE-2024-28219): every downloaded image"),
    "pyarrow": ("14.0.1", "arbitrary object deserialisation from IPC and parquet (CVE-2023-47248): URL lists"),
    "tqdm": ("4.66.3", "eval of CLI arguments (CVE-2024-34062)"),
}


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name.lower(): r for d in deps}


@pytest.mark.parametrize("package", sorted(FIXED_IN))
def test_no_release_before_the_fix_is_admitted(package: str) -> None:
    fixed, why = FIXED_IN[package]
    spec = requirements()[package].specifier
    floors = [Version(s.version) for s in spec if s.operator in (">=", ">", "==", "~=")]
    assert floors and min(floors) >= Version(fixed), f"{package}{spec} admits releases before {fixed}: {why}"
