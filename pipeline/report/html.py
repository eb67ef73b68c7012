"""HTML pieces for the report: one self-contained page (inline CSS, images as data URIs), no template engine."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin-top:36px;border-bottom:2px solid #d8dde3;padding-bottom:4px}h3{margin-top:24px}
.meta{color:#5b6670;font-size:14px}
table{border-collapse:collapse;margin:8px 0;font-size:14px;background:#fff}
td,th{border:1px solid #d8dde3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{background:#fff;border:1px solid #d8dde3}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 14px}
.card{width:150px;background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:6px;font-size:12px}
.card img{width:138px;height:104px;object-fit:contain;background:#eef1f4;display:block;margin-bottom:4px}
.card .v{font-weight:600}.card .c{color:#333;word-wrap:break-word}.card.kept{border-color:#3a9d5d;border-width:2px}
.noimg{width:138px;height:104px;background:#f3e6e6;display:flex;align-items:center;justify-content:center;
color:#8a3b3b;font-size:11px;text-align:center;margin-bottom:4px}
.cluster{border-left:3px solid #8aa4c0;padding-left:8px;margin:8px 0}
nav a{margin-right:12px}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{fmt(c)}</td>' if isinstance(c, int | float) and not isinstance(c, bool)
                         else f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def img(uri: str, alt: str = "") -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


@dataclass
class Card:
    """One sample in a grid: its thumbnail (or why it has none), a value line and its caption."""

    image: str | None
    value: str
    caption: str
    missing: str = "no image"
    kept: bool = False

    def render(self) -> str:
        pic = img(self.image, self.caption[:80]) if self.image else f'<div class="noimg">{esc(self.missing)}</div>'
        cls = "card kept" if self.kept else "card"
        cap = self.caption if len(self.caption) <= 140 else self.caption[:137] + "..."
        return f'<div class="{cls}">{pic}<div class="v">{esc(self.value)}</div><div class="c">{esc(cap)}</div></div>'


def grid(cards: list[Card]) -> str:
    if not cards:
        return '<p class="meta">none</p>'
    return '<div class="grid">' + "".join(c.render() for c in cards) + "</div>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (anchor, heading, body html)."""
    nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{esc(h)}</h2>{b}</section>' for a, h, b in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style>"
            f"</head><body><main><h1>{esc(title)}</h1><p class='meta'>{esc(subtitle)}</p><nav>{nav}</nav>{body}"
            "</main></body></html>")
