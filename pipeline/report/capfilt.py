"""The report's CapFilt and filter-check sections: how each bootstrap's filter measured itself on its held-out pairs,
and for a recipe that judged captions, what was kept and dropped by source, with images beside their web and
synthetic captions."""

from __future__ import annotations

from pipeline.report.data import ReportData
from pipeline.report.html import esc, table

CAPTION_CARD = ("<div class='card{kept}' style='width:300px'>{pic}<div class='v'>{verdict}</div>{lines}</div>")


def filter_checks(data: ReportData) -> list[tuple[str, str, dict]]:
    """(model dir, stage, holdout result) of every training run that checked itself on held-out pairs."""
    out = []
    for rel, rec in sorted(data.results.items()):
        check = rec.get("holdout") if rel.endswith("train.json") else None
        if check:
            out.append((rel.rsplit("/", 1)[0], rec.get("kind", ""), check))
    return out


def checks_section(data: ReportData) -> str | None:
    found = filter_checks(data)
    if not found:
        return None
    rows = []
    for model_dir, _, c in found:
        history = ", ".join(f"{h['step']}: {h['estimated_auroc']:.3f}" for h in c.get("history", []))
        threshold = (c.get("platt") or {}).get("threshold_score")
        rows.append([model_dir, f"{c['estimated_auroc']:.3f}", c.get("pairs"), c.get("negatives"),
                     f"{c.get('step')} of {c.get('last_step')}", "-" if threshold is None else f"{threshold:.3f}",
                     history, c.get("warning") or "ok"])
    intro = ("<p>Each filter holds back part of its high-quality set (by uid hash; never trained on, never captioned) "
             "and measures itself there without ground truth: held-out clean pairs against the same images with "
             "captions shuffled across images (and junk images for a DFN). The estimated AUROC picks the checkpoint "
             "exported as the filter; the Platt fit on the same scores sets the cosine where P(match) = 0.5.</p>")
    return intro + table(rows, ["model", "estimated AUROC", "held-out pairs", "negatives", "chosen step",
                                "cosine at P=0.5", "estimate by step", "check"])


def _caption_line(c: dict) -> str:
    p = c.get("probability")
    value = f"P {p:.2f}" if p is not None else f"cos {c['score']:.3f}"
    mark = "&#10003;" if c["kept"] else "&#10007;"
    colour = "#2f7d4a" if c["kept"] else "#9a3b3b"
    return (f"<div class='c' style='color:{colour}'>{mark} <b>{esc(c['source'])}</b> ({value}): "
            f"{esc(c['text'])}</div>")


def _card(data: ReportData, row) -> str:
    thumb = data.thumbs(str(row["shard"]), str(row["key"])) if data.thumbs else None
    pic = f"<img src='{thumb}' alt=''>" if thumb else "<div class='noimg'>no image</div>"
    caps = list(row["captions"])
    kept = sum(bool(c["kept"]) for c in caps)
    verdict = f"kept, {kept} of {len(caps)} captions" if row["kept"] else f"dropped ({esc(row['drop_op'])})"
    return CAPTION_CARD.format(kept=" kept" if row["kept"] else "", pic=pic, verdict=verdict,
                               lines="".join(_caption_line(c) for c in caps))


def _samples(data: ReportData, sel) -> str:
    """Images judged by CapFilt: some saved by a synthetic caption, some whose web caption survived, some dropped."""
    judged = sel[sel["captions"].map(lambda caps: caps is not None and len(caps) > 0)]
    k = max(2, data.max_cards // 2)

    def has(caps, source, kept):
        return any(c["source"] == source and bool(c["kept"]) == kept for c in caps)

    groups = [
        ("Web caption dropped, a synthetic caption kept", judged[judged["captions"].map(
            lambda caps: has(caps, "web", False) and has(caps, "synthetic", True))]),
        ("Web caption kept", judged[judged["captions"].map(lambda caps: has(caps, "web", True))]),
        ("No caption kept: image dropped", judged[~judged["kept"]]),
    ]
    out = []
    for title, part in groups:
        cards = "".join(_card(data, r) for _, r in part.head(k).iterrows())
        out.append(f"<h3>{esc(title)} ({len(part)})</h3><div class='grid'>{cards or 'none'}</div>")
    return "".join(out)


def sections(data: ReportData) -> list[tuple[str, str, str]] | None:
    """One section on the filter checks, one per recipe that judged captions."""
    out = []
    checks = checks_section(data)
    if checks:
        out.append(("filter-checks", "Filter self-checks (held-out pairs)", checks))
    for recipe, (info, sel) in sorted(data.selections.items()):
        counts = info.get("captions")
        if not counts or "captions" not in sel:
            continue
        rows = [[source, counts[source]["judged"], counts[source]["kept"],
                 "-" if counts[source]["rejected_fraction"] is None else f"{counts[source]['rejected_fraction']:.1%}"]
                for source in ("web", "synthetic")]
        body = (f"<p>Recipe <b>{esc(recipe)}</b>: a separate filter judged each image's web caption and its "
                f"synthetic captions; {counts['images_with_caption']} of {info.get('samples')} images keep at least "
                "one caption (BLIP's filter rejected 25% of its nucleus captions, 19% of beam search's).</p>"
                + table(rows, ["captions", "judged", "kept", "rejected"]) + _samples(data, sel))
        out.append((f"capfilt-{recipe}", f"CapFilt: {recipe}", body))
    return out or None
