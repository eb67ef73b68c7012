"""Run a pipeline config's stages in order (or one of them), each resuming where an earlier run stopped."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.tables import fmt_seconds, print_summary
from pipeline.pipeline_config import PipelineConfig
from pipeline.stages import stage_module
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)


def run_pipeline(cfg: PipelineConfig, only: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Run every stage (or just `only`); return each stage's result. Finished shards are skipped by each stage."""
    if only is not None and only not in cfg.stages:
        raise ConfigError(f"{config_path or 'config'}: no stage named {only!r}; stages: {', '.join(cfg.stages)}")
    names = [only] if only else list(cfg.stages)
    results: dict[str, Any] = {}
    # Every stage checks what it can before the first one starts: a bad recipe fails now, not an hour in.
    for name in names:
        module = stage_module(cfg.stages[name].kind)
        if hasattr(module, "preflight"):
            module.preflight(StageContext(pipeline=cfg, stage=name, config_path=config_path), cfg.stages[name])
    t0 = time.time()
    for name in names:
        stage_cfg = cfg.stages[name]
        ctx = StageContext(pipeline=cfg, stage=name, config_path=config_path, results=results)
        print(f"\n>> stage {name} ({stage_cfg.kind})", flush=True)
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
