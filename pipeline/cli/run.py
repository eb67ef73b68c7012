"""Run a pipeline config's stages in order (or one of them), each resuming where an earlier run stopped."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.layout import fs_and_path, join
from pipeline.core.locks import lock_dataset
from pipeline.core.tables import fmt_seconds, print_summary
from pipeline.pipeline_config import PipelineConfig
from pipeline.stages import stage_module
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


def run_log_path(cfg: PipelineConfig) -> str:
    """Where a run writes its log: `<root>/_logs/` for a local root, a local temporary folder for a remote one."""
    from pipeline.core.layout import is_local

    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    if is_local(cfg.root):
        return os.path.join(fs_and_path(cfg.root)[1], "_logs", name)
    return os.path.join(tempfile.gettempdir(), "winnow-logs", name)


@dataclass
class LockOptions:
    """How a stage takes its datasets' locks (see `pipeline.core.locks`)."""

    wait_s: float = 0.0  # wait this long for another run to finish with a dataset
    stale_after_s: float | None = None  # a lock from another host older than this is taken over
    break_lock: bool = False  # take over any lock (its holder is known, by the user, to be gone)


def run_pipeline(cfg: PipelineConfig, only: str | None = None, config_path: str | None = None,
                 locks: LockOptions | None = None) -> dict[str, Any]:
    """Run every stage (or just `only`); return each stage's result. Finished shards are skipped by each stage.
    A stage holds the lock of each dataset it touches while it runs: a second run on them waits or fails."""
    source = config_path or "config"
    if only is not None and only not in cfg.stages:
        raise ConfigError(f"{source}: no stage named {only!r}; stages: {', '.join(cfg.stages)}")
    names = [only] if only else list(cfg.stages)
    locks = locks or LockOptions()
    results: dict[str, Any] = {}
    # Every stage checks what it can before the first one starts: a bad recipe fails now, not an hour in.
    touched = {name: cfg.stages[name].check_datasets(name, source) for name in names}
    for name in names:
        module = stage_module(cfg.stages[name].kind)
        if hasattr(module, "preflight"):
            module.preflight(StageContext(pipeline=cfg, stage=name, config_path=config_path), cfg.stages[name])
    t0 = time.time()
    for name in names:
        stage_cfg = cfg.stages[name]
        ctx = StageContext(pipeline=cfg, stage=name, config_path=config_path, results=results)
        print(f"\n>> stage {name} ({stage_cfg.kind})", flush=True)
        with ExitStack() as held:
            for dataset in sorted(set(touched[name])):  # one order for every run: two runs never wait on each other
                held.enter_context(lock_dataset(join(cfg.root, dataset), wait_s=locks.wait_s,
                                                stale_after_s=locks.stale_after_s, break_lock=locks.break_lock))
            results[name] = stage_module(stage_cfg.kind).run(ctx, stage_cfg)
    if only is None:
        _finish(cfg, results, time.time() - t0)
    return results


def _finish(cfg: PipelineConfig, results: dict[str, Any], seconds: float) -> None:
    rows: list[tuple[str, Any]] = [("run root", cfg.root)]
    if cfg.synthetic is not None:
        rows.append(("synthetic web", f"{cfg.synthetic_dir()} (ground truth: truth.parquet)"))
    try:
        from pipeline.report import build_report, load_report_data
        from pipeline.report.encoders import summary_rows

        data = load_report_data(cfg)  # read once: the report and the curated-vs-raw lines below
        rows.append(("report", build_report(cfg, data=data)))
        rows += summary_rows(data)
    except ImportError:
        pass
    for name, res in results.items():
        where = res.get("dataset") or res.get("output") if isinstance(res, dict) else None
        rows.append((f"stage {name}", where or "done"))
    rows.append(("wall time", fmt_seconds(seconds)))
    print_summary(f"pipeline {cfg.name} finished", rows)
