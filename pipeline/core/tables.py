"""Plain-text tables: end-of-stage summaries, `winnow status`, `winnow eval`, `winnow jobs`.

In the base layer because stages, the shard runners and the CLI all print them."""

from __future__ import annotations

from typing import Any


def format_table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    cells = [[str(c) for c in r] for r in ([header] if header else []) + rows]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(len(r) for r in cells))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_summary(title: str, rows: list[tuple[str, Any]]) -> None:
    print(f"\n== {title}")
    print(format_table([[k, v] for k, v in rows]))


def fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.1f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.2f}h"
