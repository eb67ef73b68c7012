"""Where each data stage's time went: its split (reading, decoding, model, writing, waiting) as a stacked bar per
stage, its start-up and the part that held it back (`pipeline.core.timing`, recorded in each stage's manifest)."""

from __future__ import annotations

import numpy as np

from pipeline.core.timing import PARTS, TimeSplit
from pipeline.report.data import ReportData
from pipeline.report.html import esc, img, png_uri, table
from pipeline.report.plots import COLORS, _plt

NOTE = ("The bottleneck is the working part with the most seconds; waiting is the driver idle until the slowest part "
        "delivers. Start-up: from the stage's start to its first sample processed.")


def _stages(data: ReportData) -> list[tuple[str, dict]]:
    """(label, manifest section) of every stage that recorded a time split, in manifest order."""
    out = []
    for ds_name, m in data.manifests.items():
        for stage, sec in (m.get("stages") or {}).items():
            split = sec.get("time_split") or {}
            if any(split.get(p) for p in PARTS):
                out.append((f"{stage} ({ds_name})", sec))
    return out


def split_bars(rows: list[tuple[str, dict]]) -> str:
    """One horizontal bar per stage, its parts' seconds stacked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(rows) + 1.1))
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for i, part in enumerate(PARTS):
        secs = np.array([float(sec["time_split"].get(part) or 0.0) for _, sec in rows])
        ax.barh(y, secs, left=left, color=COLORS[i % len(COLORS)], label=part)
        left += secs
    ax.set_yticks(y, [label for label, _ in rows], fontsize=7)
    ax.set_xlabel("seconds (parts run at once in different processes: their sum exceeds the wall time)", fontsize=7)
    ax.legend(fontsize=7, frameon=False, ncol=len(PARTS), loc="lower right", bbox_to_anchor=(1, 1))
    ax.tick_params(labelsize=7)
    uri = png_uri(fig)
    plt.close(fig)
    return uri


def section(data: ReportData) -> str | None:
    rows = _stages(data)
    if not rows:
        return None
    lines = []
    for label, sec in rows:
        neck = sec.get("bottleneck") or {}
        startup = sec.get("startup_seconds")
        lines.append([label, f"{sec.get('wall_seconds', 0):.1f}s", "-" if startup is None else f"{startup:.1f}s",
                      TimeSplit(sec["time_split"]).text().split("; bottleneck")[0],
                      f"{neck['part']} ({neck['share']:.0%})" if neck else "-"])
    return (img(split_bars(rows), "time split per stage")
            + table(lines, ["stage", "wall", "start-up", "time split", "bottleneck"])
            + f"<p>{esc(NOTE)}</p>")
