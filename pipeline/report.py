"""`winnow report CONFIG`: one self-contained HTML page (images inline) of what a run did, from what is on disk.

    winnow report configs/demo.yaml        # -> <root>/<pool>/report/index.html

The report reads manifests, signals, selections and result files (`train.json`, `eval.json`) and renders what
exists: the stages, the download's reasons, signal histograms with each recipe's threshold drawn in, each recipe's
funnel with sample grids (highest, lowest and borderline dfn_score, samples dropped by each op, near-duplicate
clusters), the training shards and the training results.

Other stages add sections by adding a module `pipeline/report_<name>.py` with
`REPORT_SECTIONS = [(order, anchor, heading, fn)]`, `fn(data: ReportData) -> str | None` (HTML, or None to skip);
see `pipeline/report_curation.py`. Sections are ordered by `order`; a section that fails shows its error instead.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time

from pipeline.core.layout import atomic_write
from pipeline.report_data import ReportData
from pipeline.report_html import esc, page

log = logging.getLogger(__name__)


def collect_sections() -> list[tuple]:
    """Every `REPORT_SECTIONS` entry of the `pipeline.report_*` modules, in order."""
    import pipeline

    found = []
    for mod in pkgutil.iter_modules(pipeline.__path__):
        if mod.name.startswith("report_"):
            found += getattr(importlib.import_module(f"pipeline.{mod.name}"), "REPORT_SECTIONS", [])
    return sorted(found, key=lambda s: s[0])


def report_dataset(cfg) -> str | None:
    """The dataset a run's report is about: the scored pool, else the filtered one, else the downloaded one."""
    stages = list(getattr(cfg, "stages", {}).values())
    for kind, attr in (("score", "input"), ("filter", "input"), ("download", "output")):
        for st in stages:
            if st.kind == kind and getattr(st, attr, None):
                return getattr(st, attr)
    return None


def render(data: ReportData) -> str:
    rendered: list[tuple[str, str, str]] = []
    for _, anchor, heading, fn in collect_sections():
        try:
            body = fn(data)
        except Exception as err:  # one broken section must not cost the user the rest of the report
            log.warning("report: section %s failed: %s", anchor, err, exc_info=True)
            body = f"<p>This section could not be built: {esc(type(err).__name__)}: {esc(err)}</p>"
        if body is None:
            continue
        rendered += body if isinstance(body, list) else [(anchor, heading, body)]
    subtitle = f"dataset {data.dataset.url} - built {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return page(f"winnow report: {data.name}", subtitle, rendered)


def load_report_data(cfg, dataset: str | None = None, max_cards: int = 8) -> ReportData:
    """What the report of a pipeline config shows: its dataset's signals and selections, every manifest and result."""
    return ReportData.load(cfg.root, dataset or report_dataset(cfg) or "pool", pipeline=cfg, max_cards=max_cards)


def build_report(cfg, dataset: str | None = None, out: str | None = None, max_cards: int = 8,
                 data: ReportData | None = None) -> str:
    """Build `<root>/<dataset>/report/index.html` for a pipeline config (from `data` when already loaded); return
    where it was written."""
    data = data or load_report_data(cfg, dataset, max_cards)
    html = render(data)
    url = out or data.report_url()
    with atomic_write(url, "w") as f:
        f.write(html)
    return url
