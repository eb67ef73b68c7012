"""`winnow status`: per stage, progress from the manifests under the run root."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.cli.status import status_rows
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config


def test_status_reads_dataset_and_model_manifests(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"root": str(tmp_path / "run"), "stages": {
        "download": {"source": "synthetic", "output": "pool"},
        "train": {"kind": "train-clip", "input": "pool"},
        "later": {"kind": "train-clip", "input": "pool"}}}))
    cfg = load_pipeline_config(cfg_path)
    Dataset(cfg.root, "pool").update_manifest("download", {
        "shards": {"total": 4, "done": 3}, "samples": 300, "ok": 270, "success_rate": 0.9, "wall_seconds": 12.5})
    Dataset(cfg.root, "train").update_manifest("train", {
        "state": "complete", "steps": {"done": 50, "total": 50}, "samples": 3200, "wall_seconds": 130})
    rows = {r[0]: r for r in status_rows(cfg)}
    assert rows["download"][2:] == ["pool", "partial", "3/4", 300, "90.0%", "12.5s"]
    assert rows["train"][2:] == ["train", "complete", "50/50", 3200, "-", "2.2min"]
    assert rows["later"][3] == "not started"
