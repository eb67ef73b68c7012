"""Ops on lists of uids: keep or drop the samples of a published subset (a DataComp baseline's `.npy`), so a
recipe can reproduce someone else's selection on a local pool, or start from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from filtering.ops.base import Drops, Op
from pipeline.core.config import StrictModel
from pipeline.core.ids import check_subset_header, in_subset, load_subset, uid_halves
from pipeline.core.layout import fs_and_path


def resolve_file(value: str, base_dir: Path | None) -> str:
    """A subset file as given (a URL, an absolute path, a path from the working directory), else relative to the
    recipe's folder; ValueError naming where it looked."""
    if "://" in value:
        fs, path = fs_and_path(value)
        if not fs.exists(path):
            raise ValueError(f"no such file: {value}")
        return value
    tried = [Path(value)] if Path(value).is_absolute() else [Path.cwd() / value] + ([base_dir / value] if base_dir
                                                                                       else [])
    for p in tried:
        if p.is_file():
            return str(p.resolve())
    raise ValueError(f"no such file {value!r} (looked in {', '.join(str(p) for p in tried)})")


class UidsParams(StrictModel):
    file: str = Field(description="a DataComp subset file: .npy of dtype u8,u8 (each uid's two 64-bit halves), "
                                  "as `winnow export-subset` writes; a path relative to the recipe or a URL")
    keep: bool = Field(True, description="true: keep only the subset's uids; false: drop them")

    @field_validator("file")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        found = resolve_file(value, (info.context or {}).get("recipe_dir"))
        fs, path = fs_and_path(found)
        with fs.open(path, "rb") as f:
            check_subset_header(f, value)  # the format, from the header: a 2 GB subset is read when applied
        return found


class Uids(Op):
    """`uids: {file: subset.npy, keep: true}` keeps exactly the subset's samples; `keep: false` drops them."""

    name = "uids"
    params_model = UidsParams

    def requires(self):
        return {"uid"}

    def label(self):
        return f"uids({'keep' if self.params.keep else 'drop'} {Path(self.params.file).name})"

    def apply(self, pool, alive):
        fs, path = fs_and_path(self.params.file)
        with fs.open(path, "rb") as f:
            subset = load_subset(f, self.params.file)
        pairs, valid = uid_halves(pool.strings("uid"))
        inside = valid & in_subset(pairs, subset)
        drop = ~inside if self.params.keep else inside
        name = Path(self.params.file).name
        detail = np.where(drop, f"not in {name}" if self.params.keep else f"in {name}", None).astype(object)
        return Drops(alive & drop, np.full(pool.n, np.nan), detail)
