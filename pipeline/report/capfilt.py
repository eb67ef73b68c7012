"""The report's CapFilt and filter-check sections: how each bootstrap's filter measured itself on its held-out pairs,
and for a recipe that judged captions, what was kept and dropped by source, with images beside their web and
synthetic captions."""

from __future__ import annotations

import logging

from pipeline.report.data import ReportData
from pipeline.report.html import esc, table

log = logging.getLogger(__name__)
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
        near = c.get("auroc_near_miss")
        cut = (c.get("cut") or {}).get("probability")
        rows.append([model_dir, f"{c['estimated_auroc']:.3f}", _num(c.get("auroc_shuffled")),
                     "-" if near is None else f"{near:.3f}" + (" (counted)" if c.get("near_misses_counted") else ""),
                     c.get("pairs"), c.get("negatives"), f"{c.get('step')} of {c.get('last_step')}",
                     _num(threshold), _num(cut), history, c.get("warning") or "ok"])
    intro = ("<p>Each filter holds back part of its high-quality set (by uid hash; never trained on, never captioned) "
             "and measures itself there without ground truth: held-out clean pairs against the same images with "
             "captions shuffled across images (and junk images for a DFN), and near misses: each caption with one "
             "word swapped for another held-out caption's word at the same place, what a captioner's mistakes look "
             "like (counted in the estimate and the calibration where the filter's `holdout.near_misses` is on). "
             "The estimated AUROC picks the checkpoint exported as the filter; the Platt fit on the same scores sets "
             "the cosine where P(match) = 0.5, and the best cut is the P(match) that separates them best.</p>")
    return intro + table(rows, ["model", "estimated AUROC", "vs shuffled", "vs near misses", "held-out pairs",
                                "negatives", "chosen step", "cosine at P=0.5", "best cut P", "estimate by step",
                                "check"])


def _num(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def captioner_quality(quality: dict | None) -> str:
    """What the captioner wrote: distinct captions for the images captioned, the most written ones, and (with the
    synthetic web's truth) per attribute the share of captions naming the image's value against chance."""
    if not quality:
        return ""
    common = "; ".join(f"&ldquo;{esc(t)}&rdquo; {n} times" for t, n in quality.get("most_common", []))
    out = (f"<p>The captioner wrote <b>{quality['distinct_captions']}</b> distinct captions for "
           f"{quality['images_captioned']} images captioned ({quality['synthetic_captions']} captions; most written: "
           f"{common or 'none'}).</p>")
    attrs = quality.get("attributes")
    if attrs:
        rows = [[name, _pct(a["accuracy"]), _pct(a["chance"]), a["captions"],
                 "-" if not a["accuracy"] or not a["chance"] else f"{a['accuracy'] / a['chance']:.1f}x"]
                for name, a in attrs.items()]
        out += (f"<p>Against the synthetic web's truth (world <b>{esc(quality.get('world'))}</b>): how often a "
                "synthetic caption names what its image shows, and no other value, per attribute; "
                f"{_pct(quality.get('right'))} name everything right. At chance, its captions are near misses the "
                "filter must catch.</p>" + table(rows, ["attribute", "captions right", "chance", "captions",
                                                       "x chance"]))
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def cut_line(info: dict) -> str:
    """The capfilt cut the filter stage used, and where an automatic one came from."""
    cut = info.get("capfilt_cut")
    if not cut or cut.get("threshold") is None:
        return ""
    if cut.get("rule") == "auto":
        at_half = cut.get("balanced_accuracy_at_half")
        web = cut.get("web_probability")
        web_line = "" if web is None or web == cut["threshold"] else \
            f"; web captions: P(match) &ge; <b>{web:.3f}</b>, the best cut against unrelated captions only"
        return (f"<p>Cut: P(match) &ge; <b>{cut['threshold']:.3f}</b>, chosen on the filter's held-out pairs "
                f"(balanced accuracy {_num(cut.get('balanced_accuracy'))}; at BLIP's 0.5: {_num(at_half)}; near "
                f"misses {'counted' if cut.get('near_misses') else 'not counted'}){web_line}.</p>")
    return f"<p>Cut: {esc(cut.get('op'))}, threshold {cut['threshold']:.4g}.</p>"


def _caption_quality(data: ReportData) -> dict | None:
    """The captions' quality on the report's dataset (`pipeline.stages.caption.caption_quality`); None, with a
    log line, where it cannot be read: the rest of the section still renders."""
    from pipeline.stages.caption import caption_quality

    try:
        return caption_quality(data.pipeline, data.dataset)
    except Exception as err:  # noqa: BLE001  (a report shows what it can)
        log.warning("report: caption quality not shown: %s: %s", type(err).__name__, err)
        return None


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
    quality = None
    for recipe, (info, sel) in sorted(data.selections.items()):
        counts = info.get("captions")
        if not counts or "captions" not in sel:
            continue
        rows = [[source, counts[source]["judged"], counts[source]["kept"],
                 "-" if counts[source]["rejected_fraction"] is None else f"{counts[source]['rejected_fraction']:.1%}"]
                for source in ("web", "synthetic")]
        if quality is None:
            quality = _caption_quality(data) or {}
        body = (f"<p>Recipe <b>{esc(recipe)}</b>: a separate filter judged each image's web caption and its "
                f"synthetic captions; {counts['images_with_caption']} of {info.get('samples')} images keep at least "
                "one caption (BLIP's filter rejected 25% of its nucleus captions, 19% of beam search's).</p>"
                + cut_line(info) + table(rows, ["captions", "judged", "kept", "rejected"])
                + captioner_quality(quality) + _samples(data, sel))
        out.append((f"capfilt-{recipe}", f"CapFilt: {recipe}", body))
    return out or None
