"""Temporary alias of `pipeline.core.tables` for `pipeline/stages/train_clip.py`, which another branch owns and which
still imports `pipeline.summary`; delete this file once that import reads `pipeline.core.tables`."""

from pipeline.core.tables import fmt_seconds, format_table, print_summary  # noqa: F401
