"""`winnow status CONFIG`: per stage, shards done / total, samples, success rate, wall time, from the manifests."""

from __future__ import annotations

from typing import Any

from pipeline.core.layout import join
from pipeline.core.storage import read_json_glob
from pipeline.core.tables import fmt_seconds, format_table
from pipeline.pipeline_config import PipelineConfig


def stage_sections(cfg: PipelineConfig) -> dict[str, tuple[str, dict]]:
    """stage name -> (dataset dir, its manifest section), found by scanning the run root's manifests."""
    found: dict[str, tuple[str, dict]] = {}
    for path, m in read_json_glob(cfg.root, "*/manifest.json"):
        for stage, section in (m.get("stages") or {}).items():
            found[stage] = (path.rsplit("/", 2)[-2], section)
    return found


def status_rows(cfg: PipelineConfig) -> list[list[Any]]:
    sections = stage_sections(cfg)
    rows = []
    for name, stage_cfg in cfg.stages.items():
        if name not in sections:
            rows.append([name, stage_cfg.kind, "-", "not started", "-", "-", "-", "-"])
            continue
        where, s = sections[name]
        shards = s.get("shards") or s.get("steps") or {}  # train-clip reports steps where datasets report shards
        done = f"{shards.get('done', '-')}/{shards.get('total', '-')}" if shards else "-"
        samples = s.get("samples", "-")
        rate = f"{s['success_rate']:.1%}" if isinstance(s.get("success_rate"), (int, float)) else "-"
        state = s.get("state") or ("complete" if shards and shards.get("done") == shards.get("total") else "partial")
        wall = fmt_seconds(s["wall_seconds"]) if "wall_seconds" in s else "-"
        rows.append([name, stage_cfg.kind, where, state, done, samples, rate, wall])
    return rows


def print_status(cfg: PipelineConfig) -> None:
    print(f"run {cfg.name} at {join(cfg.root)}")
    print(format_table(status_rows(cfg),
                       header=["stage", "kind", "output", "state", "shards/steps", "samples", "success", "wall"]))
