"""The report's generator section: for each train-diffusion run (a denoiser or a normalizing flow), its final sample
grid (EMA weights, fixed prompts and seeds; a flow's: one class per row), its scores each beside its reference
(chance, the judge on real images, the Frechet floor of the sample size, a uniform model's 8 bits/dim), and its
training curves (the loss per flow-time bin among them). A later `winnow eval` (`eval.json`) replaces the scores
measured at the end of training."""

from __future__ import annotations

import base64
from typing import Any

from pipeline.core.layout import join, open_binary
from pipeline.report.data import ReportData
from pipeline.report.html import esc, img, table


def png_file_uri(url: str) -> str | None:
    try:
        with open_binary(url) as f:
            return "data:image/png;base64," + base64.b64encode(f.read()).decode()
    except OSError:
        return None


def generators(data: ReportData) -> list[dict[str, Any]]:
    """One dict per train-diffusion run found under the run root: its record and its newest evaluation."""
    out = []
    for rel, rec in sorted(data.results.items()):
        if not rel.endswith("train.json") or rec.get("kind") != "train-diffusion":
            continue
        model_dir = rel.rsplit("/", 1)[0]
        later = data.results.get(f"{model_dir}/eval.json") or {}
        scores = later if any(k in later for k in ("frechet", "attributes", "alignment", "likelihood")) else \
            rec.get("eval") or {}
        out.append({"dir": model_dir, "record": rec, "eval": scores})
    return out


def score_rows(ev: dict) -> list[list[str]]:
    rows = []
    fd, attrs, align, held = ev.get("frechet"), ev.get("attributes"), ev.get("alignment"), ev.get("heldout")
    if attrs:
        for key in ("colour", "shape", "both"):
            real = f"{attrs[f'real_{key}']:.1%}" if f"real_{key}" in attrs else "-"
            rows.append([f"{key} accuracy (zero-shot judge)", f"{attrs[key]:.1%}",
                         f"chance {attrs[f'{key}_chance']:.1%}; the judge on real images {real}"])
    if fd:
        rows.append(["Frechet distance", f"{fd['fd']:.4f}", f"two halves of the real set: {fd['fd_real_halves']:.4f} "
                     f"({fd['samples']} images, {fd['dims']} dims)"])
    if align:
        rows.append(["image-text alignment (cos x 100)", f"{align['score']:.2f}",
                     f"real pairs {align['real_score']:.2f}"])
    if held:
        rows.append(["held-out loss (fixed noise)", f"{held['loss']:.4f}", f"{held['images']} images"])
    lk = ev.get("likelihood")
    if lk:
        rows.append(["held-out bits/dim", f"{lk['bits_per_dim']:.3f} ± {lk['bits_per_dim_sem']:.3f}",
                     f"a uniform model 8; {lk['samples']} images, {lk['preprocess']} preprocessing counted; "
                     f"{lk.get('method', '')}"])
    return rows


def describe_run(run: dict) -> str:
    rec, cfg = run["record"], run["record"].get("config") or {}
    model, diffusion = cfg.get("model") or {}, cfg.get("diffusion") or {}
    batches = f"{esc(rec.get('step'))} steps x {esc((cfg.get('data') or {}).get('batch_size'))} on " \
              f"{esc((rec.get('input') or {}).get('dataset'))}"
    if model.get("kind") in ("nice", "realnvp", "glow"):
        return (f"<h3>{esc(run['dir'])}</h3><p>{esc(model['kind'])} normalizing flow, {esc(model.get('levels'))} "
                f"levels x {esc(model.get('steps_per_level'))} steps (hidden {esc(model.get('hidden'))}), "
                f"conditioning {esc(model.get('conditioning'))}, maximum likelihood, {batches}; judged by "
                f"{esc((rec.get('judge') or {}).get('source') or '-')}.</p>")
    return (f"<h3>{esc(run['dir'])}</h3><p>{esc(model.get('kind'))} {esc(model.get('layers'))} layers x "
            f"{esc((model.get('heads') or 0) * (model.get('head_dim') or 0))}, {esc(diffusion.get('family'))} "
            f"objective, {batches}; conditioned on {esc((rec.get('encoder') or {}).get('source'))}, judged by "
            f"{esc((rec.get('judge') or {}).get('source') or '-')}.</p>")


def section(data: ReportData) -> str | None:
    runs = generators(data)
    if not runs:
        return None
    parts = []
    for run in runs:
        rec = run["record"]
        head = describe_run(run)
        grid = png_file_uri(rec["grid"]) if rec.get("grid") else None
        curves = png_file_uri(join(data.root, run["dir"], "curves.png"))
        pictures = "".join(img(uri, alt) for uri, alt in ((grid, "samples"), (curves, "curves")) if uri)
        rows = score_rows(run["eval"])
        parts.append(head + (table(rows, ["score", "value", "reference"]) if rows else "<p>Not evaluated.</p>")
                     + (f'<div class="plots">{pictures}</div>' if pictures else ""))
    return "".join(parts)
