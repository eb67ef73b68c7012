"""`winnow report CONFIG`: one self-contained HTML page (images inline) of what a run did, from what is on disk.

    winnow report configs/demo.yaml        # -> <root>/<pool>/report/index.html

The report reads manifests, signals, selections and result files (`train.json`, `eval.json`) and renders what
exists: the stages, the download's reasons, signal histograms with each recipe's threshold drawn in, each recipe's
funnel with sample grids (highest, lowest and borderline dfn_score, samples dropped by each op, near-duplicate
clusters), the training shards and the training results.

A section is a function `fn(data: ReportData) -> str | None` (HTML, or None: nothing to show yet) in the module
of its group (`overview`, `curation`, `encoders`), and one line `(anchor, heading, fn)` in `SECTIONS` below, which
is the order of the page. A function may instead return a list of `(anchor, heading, html)`, one section each
(`curation.recipes`: one per recipe). A section that fails shows its error instead.
"""

from __future__ import annotations

import logging
import time

from pipeline.core.layout import atomic_write
from pipeline.report import capfilt, curation, encoders, generation, ingest, overview, timing
from pipeline.report.data import ReportData
from pipeline.report.html import esc, page

log = logging.getLogger(__name__)

SECTIONS = [
    ("run", "Run", overview.overview),
    ("download", "Download", curation.download),
    ("ingest", "Ingested data", ingest.section),
    ("score", "Signals and scores", curation.score),
    ("recipes", None, curation.recipes),  # one section per recipe
    ("reshard", "Training shards", curation.reshard),
    ("capfilt", None, capfilt.sections),  # the filters' self-checks, and one section per recipe that judged captions
    ("encoders", "Encoders: curated vs raw", encoders.section),
    ("generation", "Text-to-image generator", generation.section),
    ("training", "Training and evaluation", overview.training),
    ("time", "Where the time went", timing.section),
]


def report_dataset(cfg) -> str | None:
    """The dataset a run's report is about: the scored pool, else the filtered one, else the downloaded or ingested
    one."""
    stages = list(getattr(cfg, "stages", {}).values())
    for kind, attr in (("score", "input"), ("filter", "input"), ("download", "output"), ("ingest", "output")):
        for st in stages:
            if st.kind == kind and getattr(st, attr, None):
                return getattr(st, attr)
    return None


def render(data: ReportData) -> str:
    rendered: list[tuple[str, str, str]] = []
    for anchor, heading, fn in SECTIONS:
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
