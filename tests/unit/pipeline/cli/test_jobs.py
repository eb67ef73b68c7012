"""`winnow submit`: the repo uploaded as the job's working_dir keeps every source file the cluster must import."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.jobs import EXCLUDES

REPO = Path(__file__).resolve().parents[4]


def test_the_job_upload_excludes_no_source_file() -> None:
    # Ray's own matcher for runtime_env excludes (gitignore patterns against paths relative to the working_dir)
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, list(EXCLUDES))
    sources = [p for top in ("pipeline", "filtering", "training", "configs") for p in (REPO / top).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert len(sources) > 50
    assert [str(p.relative_to(REPO)) for p in sources if excluded(p)] == []
