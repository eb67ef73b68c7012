"""Where a stage's time goes: the split's arithmetic, its bottleneck, the stage record's summary and manifest, and
the report's section drawn from the manifests."""

from __future__ import annotations

import json
import re
import time

import pytest

from pipeline.core.layout import Dataset
from pipeline.core.timing import TimeSplit
from pipeline.execution.record import StageRecord
from pipeline.report import SECTIONS
from pipeline.report.data import ReportData
from pipeline.report.timing import section


def test_parts_add_up_and_the_busiest_working_part_is_the_bottleneck():
    split = TimeSplit({"reading": 1.0, "decoding": 6.0})
    split.add({"model": 3.0, "waiting": 50.0}).add(TimeSplit({"decoding": 2.0}))
    assert split.as_dict() == {"reading": 1.0, "decoding": 8.0, "model": 3.0, "writing": 0.0, "waiting": 50.0}
    assert split.bottleneck() == ("decoding", pytest.approx(8 / 12))  # waiting is never the cause
    assert split.text().endswith("bottleneck: decoding (67%)")
    assert TimeSplit().bottleneck() is None
    with pytest.raises(KeyError, match="unknown part 'decode'; parts: reading, decoding"):
        split.add({"decode": 1.0})


def test_timed_iteration_and_parts_measure_wall_time():
    split = TimeSplit()

    def slow():
        for i in range(3):
            time.sleep(0.02)
            yield i

    got = []
    for i in split.timed(slow(), "reading"):
        with split.part("writing"):
            time.sleep(0.01)
        got.append(i)
    assert got == [0, 1, 2]
    assert 0.05 <= split.seconds["reading"] < 0.5 and 0.025 <= split.seconds["writing"] < 0.5


def test_stage_record_sums_shard_splits_into_manifest_and_summary(tmp_path, capsys):
    ds = Dataset(str(tmp_path), "pool")
    record = StageRecord("score", ds, ["00000", "00001"], folder="signals")
    t0 = record.t0
    for shard, decoding in (("00000", 3.0), ("00001", 5.0)):
        rec = {"samples": 10, "ok": 10, "time_split": {"reading": 0.5, "decoding": decoding, "model": 2.0},
               "first_sample_at": t0 + (4.0 if shard == "00000" else 2.5)}
        ds.write_marker(shard, rec, "signals")
        record.shard_done(rec)
    record.add_time({"writing": 1.0})
    record.finish({"kind": "score"})
    sec = json.loads((tmp_path / "pool" / "manifest.json").read_text())["stages"]["score"]
    assert sec["time_split"] == {"reading": 1.0, "decoding": 8.0, "model": 4.0, "writing": 1.0, "waiting": 0.0}
    assert sec["bottleneck"] == {"part": "decoding", "share": round(8 / 14, 3)}
    assert sec["startup_seconds"] == 2.5  # the earliest first sample of any shard
    out = capsys.readouterr().out
    assert "bottleneck: decoding (57%)" in out and re.search(r"start-up\s+2\.5s", out)


def test_report_shows_each_stage_split_and_bottleneck(tmp_path):
    assert any(anchor == "time" for anchor, _, _ in SECTIONS)
    ds = Dataset(str(tmp_path), "pool")
    ds.update_manifest("download", {"kind": "download", "wall_seconds": 12.0, "startup_seconds": 3.2,
                                    "time_split": {"reading": 20.0, "decoding": 9.0, "writing": 1.0},
                                    "bottleneck": {"part": "reading", "share": 0.667}})
    ds.update_manifest("score", {"kind": "score", "wall_seconds": 30.0, "startup_seconds": None,
                                 "time_split": {"reading": 1.0, "decoding": 25.0, "model": 20.0, "waiting": 5.0},
                                 "bottleneck": {"part": "decoding", "share": 0.543}})
    html = section(ReportData.load(str(tmp_path), "pool"))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "data:image/png;base64" in html
    assert "download (pool) 12.0s 3.2s reading 20.0s, decoding 9.0s, writing 1.0s reading (67%)" in text
    assert "score (pool) 30.0s - reading 1.0s, decoding 25.0s, model 20.0s, waiting 5.0s decoding (54%)" in text
    assert section(ReportData.load(str(tmp_path / "empty"), "pool")) is None
