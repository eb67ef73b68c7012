"""The report's encoder comparison: every trained encoder with the data it saw, and curated vs raw at equal steps.

An encoder's training data is traced through the manifests: a dataset written by `reshard` is a recipe's selection
of its source dataset; one written by `download` is unfiltered (as is a reshard of the `none` recipe). Two encoders
are compared when they share model, objective, steps and batch size and one was trained on a recipe's selection of
the very dataset the other was trained on unfiltered.
"""

from __future__ import annotations

from typing import Any

from pipeline.report.data import ReportData
from pipeline.report.html import esc, table
from pipeline.stages import kinds_producing

RAW_RECIPES = (None, "none")


def data_origin(data: ReportData, dataset: str | None) -> dict[str, Any]:
    """{source, recipe, samples} of a dataset from its manifest; recipe None = not filtered."""
    for sec in ((data.manifests.get(dataset) or {}).get("stages") or {}).values():
        if sec.get("kind") == "reshard":
            return {"source": sec.get("source"), "recipe": sec.get("recipe"), "samples": sec.get("kept")}
    for sec in ((data.manifests.get(dataset) or {}).get("stages") or {}).values():
        if sec.get("kind") == "download":
            return {"source": dataset, "recipe": None, "samples": sec.get("ok")}
    return {"source": dataset, "recipe": None, "samples": None}


def encoders(data: ReportData) -> list[dict[str, Any]]:
    """One dict per trained encoder (a `train.json` of kind train-clip), with its zero-shot result."""
    out = []
    for rel, rec in sorted(data.results.items()):
        if not rel.endswith("train.json") or rec.get("kind") not in kinds_producing("encoder"):
            continue
        model_dir = rel.rsplit("/", 1)[0]
        cfg = rec.get("config") or {}
        later = data.results.get(f"{model_dir}/eval.json") or {}  # `winnow eval` may have rerun it
        zs = later.get("zeroshot") or (rec.get("eval") or {}).get("zeroshot") or {}
        dataset = (rec.get("input") or {}).get("dataset")
        out.append({"dir": model_dir, "dataset": dataset, **data_origin(data, dataset),
                    "key": ((cfg.get("model") or {}).get("name"), cfg.get("objective"), rec.get("step"),
                            (cfg.get("data") or {}).get("batch_size")),
                    "top1": zs.get("top1"), "top5": zs.get("top5")})
    return out


def filter_networks(data: ReportData) -> set[str]:
    """Model directories that a score stage of the pipeline scores with (`model_from`)."""
    stages = getattr(data.pipeline, "stages", {}) or {}
    return {data.pipeline.output_of(st.model_from) for st in stages.values()
            if getattr(st, "model_from", None) in stages}


def comparisons(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(curated, raw) pairs: same model/objective/steps/batch, curated = a recipe's cut of the raw one's data."""
    pairs = []
    for c in rows:
        if c["recipe"] in RAW_RECIPES or c["top1"] is None:
            continue
        for r in rows:
            if r["recipe"] in RAW_RECIPES and r["top1"] is not None and r["key"] == c["key"] \
                    and r["source"] == c["source"]:
                pairs.append((c, r))
    return pairs


def _data_text(row: dict) -> str:
    if row["recipe"] in RAW_RECIPES:
        return f"{row['dataset']}: unfiltered" + (f" ({row['source']})" if row["source"] != row["dataset"] else "")
    return f"{row['dataset']}: recipe {row['recipe']} of {row['source']}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def section(data: ReportData) -> str | None:
    rows = encoders(data)
    if not rows:
        return None
    pairs = comparisons(rows)
    gain = {id(c): 100 * (c["top1"] - r["top1"]) for c, r in pairs}
    dfn = filter_networks(data)
    cells = [[r["dir"] + (" (filtering network)" if r["dir"] in dfn else ""), _data_text(r),
              r["samples"] if r["samples"] is not None else "-", f"{r['key'][0]} ({r['key'][1]})",
              f"{r['key'][2]} x {r['key'][3]}", _pct(r["top1"]), _pct(r["top5"]),
              f"{gain[id(r)]:+.1f}" if id(r) in gain else "-"] for r in rows]
    body = table(cells, ["encoder", "training data", "samples", "model", "steps x batch", "zero-shot top-1", "top-5",
                         "vs unfiltered (points)"])
    notes = [f"<p><b>Curation vs raw pool</b>, same model and steps: {esc(c['dir'])} ({esc(c['recipe'])}, "
             f"{esc(c['samples'])} samples) {_pct(c['top1'])} vs {esc(r['dir'])} (unfiltered, {esc(r['samples'])} "
             f"samples) {_pct(r['top1'])} zero-shot top-1: <b>{100 * (c['top1'] - r['top1']):+.1f} points</b>. "
             "One seed each; <code>python bench/curation_quality.py</code> runs several seeds on a larger web.</p>"
             for c, r in pairs]
    return "".join(notes) + body


def summary_rows(data: ReportData) -> list[tuple[str, str]]:
    """The run summary's lines for each curated-vs-raw pair of encoders."""
    return [("curated vs raw", f"{c['dir']} {_pct(c['top1'])} vs {r['dir']} {_pct(r['top1'])} zero-shot top-1 "
             f"({100 * (c['top1'] - r['top1']):+.1f} points; same model, steps and batch)")
            for c, r in comparisons(encoders(data))]
