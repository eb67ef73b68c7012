"""`winnow export-subset CONFIG --stage FILTER --out subset.npy`: a filter stage's kept uids as a DataComp subset.

The file is what DataComp's resharder reads (`--subset-file`): a 1-D .npy of dtype `u8,u8`, each uid's high and
low 64 bits, sorted and unique (`pipeline.core.ids`). A recipe op `uids: {file: subset.npy}` reads it back, so a
selection made here, or published with a DataComp baseline, is reproduced on any pool that holds the same uids.
"""

from __future__ import annotations

from pipeline.core.config import ConfigError
from pipeline.core.ids import subset_array
from pipeline.core.layout import atomic_write, fs_and_path
from pipeline.pipeline_config import PipelineConfig
from pipeline.stages.context import StageContext


def kept_uids(cfg: PipelineConfig, stage: str, config_path: str | None = None) -> tuple[list[str], str]:
    """(kept uids, selection file) of a filter stage's selection; ConfigError naming what to run first."""
    import pyarrow.parquet as pq

    source = config_path or "config"
    filters = [n for n, st in cfg.stages.items() if st.kind == "filter"]
    if stage not in filters:
        raise ConfigError(f"{source}: --stage {stage!r} is not a filter stage of this config (filter stages: "
                          f"{', '.join(filters) or 'none'})")
    st = cfg.stages[stage]
    url = StageContext(pipeline=cfg, stage=stage).dataset(st.input).sub("selection", f"{st.recipe_name}.parquet")
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise ConfigError(f"{source}: stage {stage!r} has no selection yet ({url}); run it first "
                          f"(`winnow run CONFIG --stage {stage}`)")
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["uid", "kept"])
    return [u for u, k in zip(table.column("uid").to_pylist(), table.column("kept").to_pylist(), strict=True)
            if k], url


def export_subset(cfg: PipelineConfig, stage: str, out: str, config_path: str | None = None) -> int:
    """Write the stage's kept uids to `out` (any fsspec path); return how many."""
    import numpy as np

    uids, url = kept_uids(cfg, stage, config_path)
    try:
        subset = subset_array(uids)
    except ValueError as err:
        raise ConfigError(f"{url}: {err}") from None
    with atomic_write(out, "wb") as f:
        np.save(f, subset)
    print(f"{len(subset)} uids kept by stage {stage} -> {out} (DataComp subset: .npy, dtype u8,u8, sorted)")
    return len(subset)
