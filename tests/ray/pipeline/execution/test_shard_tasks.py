"""The shard-task runner on the session's local Ray: retries, crashes, skips, damaged shards, incomplete stages."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.layout import Dataset, file_record, fs_and_path
from pipeline.execution.shard_tasks import BoundedTasks, ShardJob, StageIncomplete, run_shards


@dataclass
class CountingWork:
    """Writes `shards/<shard>.txt` with n lines; misbehaves on the first attempt of chosen shards."""

    root: str
    name: str
    attempts_dir: str
    raise_on_first: tuple[str, ...] = ()
    crash_on_first: tuple[str, ...] = ()
    always_fail: tuple[str, ...] = ()
    hang_on_first: tuple[str, ...] = ()  # sleeps a minute: only a deadline ends it

    def __call__(self, job: ShardJob) -> dict:
        marker = Path(self.attempts_dir) / f"{job.shard}-{len(list(Path(self.attempts_dir).glob(job.shard + '-*')))}"
        marker.touch()
        first = marker.name.endswith("-0")
        if job.shard in self.always_fail or (first and job.shard in self.raise_on_first):
            raise RuntimeError(f"boom in {job.shard}")
        if first and job.shard in self.crash_on_first:
            os._exit(1)  # the worker process dies mid-shard, as if killed
        if first and job.shard in self.hang_on_first:
            time.sleep(60)  # stuck on something no per-socket timeout covers
        ds = Dataset(self.root, self.name)
        fs, path = fs_and_path(ds.sub("shards", f"{job.shard}.txt"))
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        n = int(job.shard) + 1
        with fs.open(path, "w") as f:
            f.write("x\n" * n)
        return {"samples": n, "ok": n - 1, "reasons": {"bad": 1}, "files": {f"shards/{job.shard}.txt":
                                                                            file_record(fs, path)}}


def attempts(d: Path, shard: str) -> int:
    return len(list(d.glob(f"{shard}-*")))


def test_runs_retries_and_counts(ray_local, tmp_path: Path) -> None:
    ds = Dataset(str(tmp_path), "ds")
    (tmp_path / "att").mkdir()
    work = CountingWork(str(tmp_path), "ds", str(tmp_path / "att"), raise_on_first=("00001",),
                        crash_on_first=("00002",))
    jobs = [ShardJob(f"{i:05d}") for i in range(4)]
    s = run_shards(stage="t", dataset=ds, jobs=jobs, work=work, num_cpus=1, max_in_flight=2, retries=2, quiet=True)
    assert s.shards_done == 4 and s.shards_failed == [] and s.retries_used == 2
    assert s.samples == 1 + 2 + 3 + 4 and s.ok == s.samples - 4 and s.reasons == {"bad": 4}
    assert [attempts(tmp_path / "att", j.shard) for j in jobs] == [1, 2, 2, 1]
    m = ds.manifest()["stages"]["t"]
    assert m["samples"] == 10 and set(m["checksums"]) == {j.shard for j in jobs}

    # A rerun does no work at all.
    s2 = run_shards(stage="t", dataset=ds, jobs=jobs, work=work, num_cpus=1, max_in_flight=2, retries=2, quiet=True)
    assert s2.shards_skipped == 4 and s2.samples == 10
    assert [attempts(tmp_path / "att", j.shard) for j in jobs] == [1, 2, 2, 1]


def test_damaged_shard_is_rebuilt_on_rerun(ray_local, tmp_path: Path) -> None:
    ds = Dataset(str(tmp_path), "ds")
    (tmp_path / "att").mkdir()
    work = CountingWork(str(tmp_path), "ds", str(tmp_path / "att"))
    jobs = [ShardJob(f"{i:05d}") for i in range(3)]
    run_shards(stage="t", dataset=ds, jobs=jobs, work=work, max_in_flight=2, quiet=True)
    target = tmp_path / "ds" / "shards" / "00002.txt"
    target.write_text("x\n")  # truncated after it was written
    assert ds.verify_shard(ds.done_shards()["00002"])
    s = run_shards(stage="t", dataset=ds, jobs=jobs, work=work, max_in_flight=2, quiet=True)
    assert s.shards_skipped == 2
    assert attempts(tmp_path / "att", "00002") == 2 and attempts(tmp_path / "att", "00000") == 1
    assert target.read_text() == "x\n" * 3
    assert ds.verify_shard(ds.done_shards()["00002"]) == []


def test_persistent_failure_keeps_done_shards_and_says_rerun(ray_local, tmp_path: Path) -> None:
    ds = Dataset(str(tmp_path), "ds")
    (tmp_path / "att").mkdir()
    work = CountingWork(str(tmp_path), "ds", str(tmp_path / "att"), always_fail=("00001",))
    jobs = [ShardJob(f"{i:05d}") for i in range(3)]
    with pytest.raises(StageIncomplete, match=r"1 of 3 shards failed after 1 retries \(00001: .*boom in 00001"):
        run_shards(stage="t", dataset=ds, jobs=jobs, work=work, retries=1, quiet=True)
    assert sorted(ds.done_shards()) == ["00000", "00002"]
    assert attempts(tmp_path / "att", "00001") == 2
    assert ds.manifest()["stages"]["t"]["shards"]["failed"] == ["00001"]


def test_a_shard_past_its_deadline_is_cancelled_and_retried(ray_local, tmp_path: Path) -> None:
    ds = Dataset(str(tmp_path), "ds")
    (tmp_path / "att").mkdir()
    work = CountingWork(str(tmp_path), "ds", str(tmp_path / "att"), hang_on_first=("00000",))
    # The deadline runs from submission: start both workers first, so start-up time is not what is measured.
    list(BoundedTasks(time.sleep, max_in_flight=2).run({"a": (0.5,), "b": (0.5,)}))
    t0 = time.monotonic()
    s = run_shards(stage="t", dataset=ds, jobs=[ShardJob("00000"), ShardJob("00001")], work=work, num_cpus=1,
                   max_in_flight=2, retries=1, deadline_s=4, quiet=True)
    assert time.monotonic() - t0 < 45  # the first attempt alone would take 60 s
    assert s.shards_done == 2 and s.retries_used == 1 and attempts(tmp_path / "att", "00000") == 2
    assert ds.manifest()["stages"]["t"]["shard_retry_reasons"] == {"shard_deadline": 1}
