"""Plots for the report: signal histograms with each recipe's threshold drawn in, and recipe funnels."""

from __future__ import annotations

import numpy as np

from pipeline.report.html import png_uri

COLORS = ["#d1495b", "#00798c", "#edae49", "#30638e", "#6a4c93", "#2e933c"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers or CI
    import matplotlib.pyplot as plt

    return plt


def histogram(values: np.ndarray, title: str, lines: list[tuple[str, float]], log: bool = False) -> str | None:
    """A histogram of finite values, with (label, threshold) vertical lines; None when there is nothing to plot."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 2.7))
    if log:
        values = values[values > 0]
        bins = np.logspace(np.log10(values.min()), np.log10(values.max() + 1), 40) if len(values) else 10
        ax.set_xscale("log")
    else:
        bins = min(50, max(10, len(np.unique(values))))
    ax.hist(values, bins=bins, color="#8aa4c0", edgecolor="white", linewidth=0.4)
    for i, (label, x) in enumerate(lines):
        if np.isfinite(x):
            ax.axvline(x, color=COLORS[i % len(COLORS)], linestyle="--", linewidth=1.6, label=f"{label}: {x:.3g}")
    if lines:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("samples", fontsize=8)
    ax.tick_params(labelsize=7)
    uri = png_uri(fig)
    plt.close(fig)
    return uri


def funnel(steps: list[dict], title: str) -> str:
    """Horizontal bars: samples left after each step."""
    plt = _plt()
    labels = [s["label"] for s in steps]
    left = [s["left"] for s in steps]
    fig, ax = plt.subplots(figsize=(6.2, 0.32 * len(steps) + 0.9))
    y = np.arange(len(steps))[::-1]
    ax.barh(y, left, color="#30638e")
    ax.set_yticks(y, labels, fontsize=7)
    for yi, n in zip(y, left, strict=True):
        ax.text(n, yi, f" {n:,}", va="center", fontsize=7)
    ax.set_xlim(0, max(left) * 1.15 if left and max(left) else 1)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    uri = png_uri(fig)
    plt.close(fig)
    return uri
