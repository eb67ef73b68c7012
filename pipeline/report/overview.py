"""The report's sections on the run as a whole: every stage's manifest line, and the training results found."""

from __future__ import annotations

from typing import Any

from pipeline.report.data import ReportData
from pipeline.report.html import esc, fmt, table


def overview(data: ReportData) -> str | None:
    rows = []
    for ds_name, m in data.manifests.items():
        for stage, s in (m.get("stages") or {}).items():
            shards = s.get("shards") if isinstance(s.get("shards"), dict) else {}
            done = f"{shards.get('done')}/{shards.get('total')}" if shards else "-"
            rate = s.get("success_rate")
            rows.append([stage, s.get("kind") or data._kind_from_config(stage) or "-", ds_name, done,
                         s.get("samples", "-"), s.get("kept", s.get("ok", "-")),
                         f"{rate:.1%}" if isinstance(rate, int | float) else "-",
                         f"{s['wall_seconds']:.1f}s" if isinstance(s.get("wall_seconds"), int | float) else "-"])
    if not rows:
        return "<p>No stage has written a manifest under this run root yet.</p>"
    return table(rows, ["stage", "kind", "dataset", "shards", "samples", "ok / kept", "rate", "wall"])


def flatten(d: Any, prefix: str = "") -> list[list[Any]]:
    if isinstance(d, dict):
        return [row for k, v in d.items() for row in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(d, list):
        return [[prefix, f"[{len(d)} items]"]] if len(d) > 8 or any(isinstance(x, dict) for x in d) else \
            [[prefix, ", ".join(fmt(x) for x in d)]]
    return [[prefix, d]]


def training(data: ReportData) -> str | None:
    if not data.results:
        return None
    out = []
    for rel, result in data.results.items():
        rows = flatten(result)
        out.append(f"<h3>{esc(rel)}</h3>" + table(rows[:60], ["metric", "value"]))
    return "".join(out)
