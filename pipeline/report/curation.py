"""The report's sections on curation: the download's reasons, the signals and scores, each recipe's funnel with
sample grids, and the training shards a recipe's selection became."""

from __future__ import annotations

import numpy as np

from pipeline.report.data import ReportData
from pipeline.report.html import Card, esc, fmt, grid, img, table
from pipeline.report.plots import funnel, histogram

# signal -> (title, log x axis); `min_side` is min(width, height), the value `min_image_side` cuts on
HISTOGRAMS = {"dfn_score": ("dfn_score (image-caption cosine)", False), "min_side": ("shorter image side, px", False),
              "aspect_ratio": ("aspect ratio (long / short side)", False), "caption_words": ("caption words", False),
              "caption_chars": ("caption characters", False), "image_bytes": ("image bytes", True)}


def _reasons_table(reasons: dict, total: int | None = None) -> str:
    if not reasons:
        return ""
    rows = [[k, v, f"{v / total:.1%}" if total else "-"] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return table(rows[:20], ["reason", "samples", "share"])


def download(data: ReportData) -> str | None:
    found = data.sections_of_kind("download")
    if not found:
        return None
    out = []
    for ds_name, stage, s in found:
        out.append(f"<h3>{esc(stage)} &rarr; {esc(ds_name)}</h3>")
        out.append(table([["samples", s.get("samples", "-")], ["downloaded", s.get("ok", "-")],
                          ["success rate", f"{s.get('success_rate', 0):.1%}"],
                          ["wall time", f"{s.get('wall_seconds', 0):.1f}s"]]))
        out.append(_reasons_table(s.get("reasons") or {}, s.get("samples")))
    return "".join(out)


def _thresholds(data: ReportData) -> dict[str, list[tuple[str, float]]]:
    """signal -> [(recipe: op, threshold)] from every recipe's funnel."""
    lines: dict[str, list[tuple[str, float]]] = {}
    for recipe, (info, _) in data.selections.items():
        for step in info.get("funnel", []):
            if "signal" in step and step.get("threshold") is not None:
                lines.setdefault(step["signal"], []).append((f"{recipe}: {step['op']}", float(step["threshold"])))
    return lines


def _card(data: ReportData, row, value: str, kept: bool = False) -> Card:
    decodable = bool(row.get("decodable", True)) if hasattr(row, "get") else True
    image = data.thumbs(str(row["shard"]), str(row["key"])) if decodable and data.thumbs else None
    missing = row.get("decode_error") or "no image"
    return Card(image, value, str(row.get("caption") or ""), str(missing), kept)


def score(data: ReportData) -> str | None:
    df = data.signals
    if df is None:
        return None
    n, ok = len(df), int(df["decodable"].sum())
    out = [data.sample_note()]
    sec = next((s for d, _, s in data.sections_of_kind("score") if d == data.dataset.name), {})
    model = sec.get("model")
    model_text = f"{model['name']} ({model.get('pretrained') or 'random init'})" if model else "none"
    of = f" (of a sample of {n:,})" if data.sampled else ""
    out.append(table([["samples scored", data.sample.total_rows if data.sampled else n], [f"decodable{of}", ok],
                      [f"undecodable{of}", n - ok], [f"generic captions{of}", int(df["generic_caption"].sum())],
                      ["model", model_text]]))
    errors = df.loc[~df["decodable"], "decode_error"].fillna("?").str.split(":").str[0].value_counts().to_dict()
    if errors:
        out.append("<h3>Why images did not decode</h3>" + _reasons_table(errors, n))
    generic = df["generic_reason"].dropna().value_counts().to_dict()
    if generic:
        out.append("<h3>Generic captions</h3>" + _reasons_table(generic, n))
    lines = _thresholds(data)
    plots = []
    for col, (title, log) in HISTOGRAMS.items():
        if col in df:
            uri = histogram(df[col].to_numpy(dtype=float), title, lines.get(col, []), log=log)
            if uri:
                plots.append(img(uri, title))
    out.append("<h3>Signals, with each recipe's threshold</h3><div class='plots'>" + "".join(plots) + "</div>")
    if "dfn_score" in df and df["dfn_score"].notna().any():
        scored = df[df["dfn_score"].notna()].sort_values("dfn_score", kind="stable")
        k = data.max_cards
        for title, part in (("Highest dfn_score", scored.iloc[::-1][:k]), ("Lowest dfn_score", scored[:k])):
            out.append(f"<h3>{title}</h3>" + grid([_card(data, r, f"dfn {r['dfn_score']:.3f}")
                                                   for _, r in part.iterrows()]))
    return "".join(out)


def _merged(data: ReportData, sel):
    cols = [c for c in ("shard", "key", "caption", "decodable", "decode_error", "dfn_score") if c in data.signals]
    return sel.merge(data.signals[cols], on=["shard", "key"], how="left")


def recipe_section(name: str, info: dict, sel, data: ReportData) -> str:
    out = [f"<p>{esc(info.get('description', ''))}</p><p class='meta'>{esc(info.get('recipe_file', ''))}</p>"]
    pool = info.get("samples") or 1
    rows = [[s["label"], s["left"], s["dropped"], f"{s['left'] / pool:.1%}", s.get("threshold", "")]
            for s in info.get("funnel", [])]
    out.append(table(rows, ["step", "left", "dropped", "of pool", "threshold"]))
    out.append(img(funnel(info.get("funnel", []), f"{name}: samples left after each op"), f"{name} funnel"))
    if data.signals is None:
        return "".join(out)
    if data.sampled:
        out.append("<p class='meta'>Counts above: the whole pool. Sample grids below "
                   f"{esc(data.sample.note())}.</p>")
    m = _merged(data, sel)
    k = data.max_cards
    dfn_step = next((s for s in info.get("funnel", []) if s.get("signal") == "dfn_score"), None)
    if dfn_step is not None and "dfn_score" in m and np.isfinite(dfn_step["threshold"]):
        t = dfn_step["threshold"]
        near = m[m["dfn_score"].notna()].assign(gap=lambda f: (f["dfn_score"] - t).abs()).nsmallest(k, "gap")
        near = near.sort_values("dfn_score", ascending=False)
        out.append(f"<h3>Borderline dfn_score (threshold {t:.4f})</h3>" + grid(
            [_card(data, r, f"dfn {r['dfn_score']:.4f} {'kept' if r['dfn_score'] >= t else 'cut'}",
                   kept=r["dfn_score"] >= t) for _, r in near.iterrows()]))
    for step in info.get("funnel", []):
        if step["op"] == "pool" or not step["dropped"]:
            continue
        dropped = m[m["drop_step"] == step["step"]]
        if step["op"] == "dedup":
            measure = "cosine" if "semantic" in step["label"] else "distance"
            out.append(f"<h3>Near-duplicate clusters: {esc(step['label'])}</h3>")
            out.append(_clusters(data, m, dropped, measure))
            continue
        cards = []
        for _, r in dropped.head(k).iterrows():
            v = r["drop_value"]
            if step["op"] == "decodable":
                value = "does not decode"
            else:
                value = f"{step['op']}: {fmt(float(v))}" if v == v else f"{step['op']}: {r['drop_detail'] or ''}"
            cards.append(_card(data, r, value))
        out.append(f"<h3>Dropped by {esc(step['label'])} ({step['dropped']:,})</h3>" + grid(cards))
    return "".join(out)


def _clusters(data: ReportData, m, dropped, measure: str, clusters: int = 4, members: int = 3) -> str:
    """The largest groups: the kept representative, then the copies it made redundant (with their distance)."""
    if dropped.empty:
        return '<p class="meta">none</p>'
    by_uid = m.set_index("uid", drop=False)
    sizes = dropped["drop_detail"].value_counts()
    out = []
    for rep_uid in sizes.index[:clusters]:
        if rep_uid not in by_uid.index:
            continue
        rep = by_uid.loc[rep_uid]
        rep = rep.iloc[0] if getattr(rep, "ndim", 1) > 1 else rep
        cards = [_card(data, rep, f"kept ({int(sizes[rep_uid])} copies)", kept=True)]
        for _, r in dropped[dropped["drop_detail"] == rep_uid].head(members).iterrows():
            cards.append(_card(data, r, f"{measure} {fmt(float(r['drop_value']))}"))
        out.append('<div class="cluster">' + grid(cards) + "</div>")
    return "".join(out)


def reshard(data: ReportData) -> str | None:
    found = [(d, st, s) for d, st, s in data.sections_of_kind("reshard") if s.get("source") == data.dataset.name]
    if not found:
        return None
    rows = []
    for ds_name, stage, s in found:
        sizes = list((s.get("sizes") or {}).values())
        rows.append([stage, s.get("recipe"), ds_name, len(sizes), sum(sizes),
                     f"{min(sizes)}-{max(sizes)}" if sizes else "-", s.get("seed")])
    return table(rows, ["stage", "recipe", "output dataset", "shards", "samples", "per shard", "seed"])


def recipes(data: ReportData) -> list[tuple[str, str, str]]:
    return [(f"recipe-{name}", f"Recipe: {name}", recipe_section(name, info, sel, data))
            for name, (info, sel) in data.selections.items()]
