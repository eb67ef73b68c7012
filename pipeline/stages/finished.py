"""A training stage whose run already ended is not started again.

Rerunning a pipeline (after adding a stage, or after a crash in a later one) used to start every finished training
stage again: Ray Train's workers and controller (~25 s on 2 cores), the checkpoint load, the evaluation and the
export, only to find the run at its last step. A stage whose `train.json` says it reached its configured steps with
the same config (its hash) and, for a generator, the same resolved encoder and judge, and whose weights are still
there, prints its summary and returns that record instead. A changed config resumes from the newest checkpoint as
before (more steps train on; other evaluation settings evaluate again); deleting the output trains from scratch.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.core.config import config_hash
from pipeline.core.layout import join, read_json
from pipeline.core.storage import exists


def finished_record(out_dir: str, cfg: Any, steps: int, **same: Any) -> dict | None:
    """The stored `train.json` of a run of this `cfg` that reached `steps` (and whose `same` keys match), or None."""
    path = join(out_dir, "train.json")
    if not exists(path):
        return None
    record = read_json(path)
    if record.get("config_hash") != config_hash(cfg) or record.get("step", 0) < steps:
        return None
    # (compared as train.json stores them: tuples become lists)
    if any(record.get(key) != json.loads(json.dumps(value, default=str)) for key, value in same.items()):
        return None
    weights = record.get("weights")
    return record if weights and exists(weights) else None


def skip_finished(stage: str, out_dir: str, record: dict, steps: int, rows: list[tuple[str, Any]]) -> dict[str, Any]:
    """Print the finished run's summary (`rows`: the stage's own lines from the record) and return its result."""
    from pipeline.core.tables import print_summary

    print_summary(f"stage {stage}", [
        ("state", f"already complete: step {record['step']}/{steps}, same config; nothing started "
                  f"(delete {out_dir} to train again)"), *rows, ("weights", record["weights"])])
    return {"output": out_dir, "skipped": "already complete",
            **{k: v for k, v in record.items() if k != "config"}}
