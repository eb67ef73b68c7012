"""The report's section on ingested data: per ingest stage, where the data came from, whether it is read in place,
how each sample's uid was chosen, and the verdicts per reason (an ingest's counterpart of the download outcome)."""

from __future__ import annotations

from pipeline.ingest.config import MODES
from pipeline.report.curation import _reasons_table
from pipeline.report.data import ReportData
from pipeline.report.html import esc, table


def section(data: ReportData) -> str | None:
    found = data.sections_of_kind("ingest")
    if not found:
        return None
    out = []
    for ds_name, stage, s in found:
        shards = s.get("shards") or {}
        rows = [["source", f"{s.get('source_kind', '-')}: {_source(s)}"],
                ["mode", MODES.get(s.get("mode"), s.get("mode") or "-")],
                ["shards", f"{shards.get('done', '-')}/{shards.get('total', '-')}"],
                ["samples", s.get("samples", "-")], ["ok", s.get("ok", "-")],
                ["success rate", f"{s.get('success_rate', 0):.1%}"],
                ["uids from", ", ".join(f"{k} {v}" for k, v in (s.get("uid_rules") or {}).items()) or "-"]]
        if s.get("source_bytes_in_place"):
            rows.append(["size on disk", f"{s.get('dataset_bytes', 0) / 1e6:.2f} MB of winnow files for "
                                         f"{s['source_bytes_in_place'] / 1e6:.2f} MB of source tars"])
        rows += [[f"member skipped: {k}", v] for k, v in (s.get("members_skipped") or {}).items()]
        rows += [[f"read error: shard {k}", v] for k, v in list((s.get("read_errors") or {}).items())[:5]]
        if s.get("changed_sources_reingested"):
            rows.append(["changed sources re-ingested", ", ".join(s["changed_sources_reingested"][:10])])
        out.append(f"<h3>{esc(stage)} &rarr; {esc(ds_name)}</h3>")
        out.append(table(rows))
        out.append(_reasons_table(s.get("reasons") or {}, s.get("samples")))
    return "".join(out)


def _source(s: dict) -> str:
    src = ((s.get("config") or {}).get("source") or {})
    where = src.get("shards") or src.get("path") or src.get("files") or "-"
    return ", ".join(where) if isinstance(where, list) else str(where)
