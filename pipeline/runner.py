"""Run a stage shard by shard on Ray: bounded tasks in flight, retries, done markers, progress and a summary.

A stage hands the runner a list of `ShardJob`s and a plain work function `work(job) -> record`. The work function
writes the shard's files under temporary names and renames them into place; it returns a record (counts, reasons,
file checksums) that the runner's task wrapper writes as the shard's `_done` marker, last. A rerun skips shards
whose marker exists and whose files still match the recorded checksums, so a crash at any point is repaired by
running the same command again.

img2dataset's own ray distributor submits every shard at once and never retries; this runner keeps at most
`max_in_flight` tasks submitted (memory and object store stay bounded) and resubmits a failed shard, whether the
task raised or its worker process died, up to `retries` times.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import WinnowError
from pipeline.core.layout import Dataset
from pipeline.summary import print_stage_summary

log = logging.getLogger(__name__)


@dataclass
class ShardJob:
    shard: str  # output shard name, e.g. "00003"; one input shard -> one output shard with the same name
    payload: Any = None  # whatever the work function needs: an input file, a row range, ...


@dataclass
class StageSummary:
    stage: str
    dataset: str
    shards_total: int
    shards_done: int
    shards_skipped: int
    shards_failed: list[str]
    retries_used: int
    samples: int
    ok: int
    reasons: dict[str, int]
    wall_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.ok / self.samples if self.samples else 0.0

    def as_dict(self) -> dict:
        return {
            "shards": {
                "total": self.shards_total,
                "done": self.shards_done,
                "skipped_already_done": self.shards_skipped,
                "failed": self.shards_failed,
                "retries_used": self.retries_used,
            },
            "samples": self.samples,
            "ok": self.ok,
            "success_rate": round(self.success_rate, 4),
            "reasons": self.reasons,
            "wall_seconds": round(self.wall_seconds, 2),
            **self.extra,
        }


class StageIncomplete(WinnowError):
    """Some shards still failed after their retries; the done ones are kept, a rerun retries the rest."""


def _run_and_mark(work: Callable[[ShardJob], dict], job: ShardJob, root: str, name: str, folder: str) -> dict:
    """Task body: do the shard's work, then write its marker (after its files are in place)."""
    t0 = time.time()
    record = work(job)
    record = {**record, "shard": job.shard, "seconds": round(time.time() - t0, 3)}
    Dataset(root, name).write_marker(job.shard, record, folder)
    return record


def aggregate(records: dict[str, dict]) -> tuple[int, int, dict[str, int]]:
    samples, ok, reasons = 0, 0, Counter()
    for r in records.values():
        samples += int(r.get("samples", 0))
        ok += int(r.get("ok", 0))
        reasons.update(r.get("reasons", {}))
    return samples, ok, dict(reasons.most_common())


def run_shards(
    *,
    stage: str,
    dataset: Dataset,
    jobs: list[ShardJob],
    work: Callable[[ShardJob], dict],
    num_cpus: float = 1.0,
    max_in_flight: int = 2,
    retries: int = 2,
    folder: str = "shards",
    verify_done: bool = True,
    manifest: dict | None = None,
    extra_reasons: dict[str, int] | None = None,
    progress_unit: str = "shard",
    quiet: bool = False,
) -> StageSummary:
    """Run `work` over `jobs` on Ray, skipping complete shards; write the manifest section; return the summary.

    `extra_reasons` are samples the stage dropped before any shard work (e.g. repeated URLs), so that the summary's
    counts add up to the stage's input.
    Raises StageIncomplete (after writing the manifest) when shards still fail after `retries` retries.
    """
    import ray
    from tqdm import tqdm

    t0 = time.time()
    done = dataset.done_shards(folder)
    todo: list[ShardJob] = []
    for job in jobs:
        record = done.get(job.shard)
        if record is None:
            todo.append(job)
            continue
        problems = dataset.verify_shard(record) if verify_done else []
        if problems:
            log.warning("%s shard %s is done but damaged, rebuilding it: %s", stage, job.shard, "; ".join(problems))
            dataset.remove_marker(job.shard, folder)
            todo.append(job)
    skipped = len(jobs) - len(todo)

    # max_retries=0: the runner does its own retries so that it can count and report them.
    task = ray.remote(num_cpus=num_cpus, max_retries=0)(_run_and_mark)
    work_ref = ray.put(work)
    attempts: Counter[str] = Counter()
    failed: dict[str, str] = {}
    in_flight: dict[Any, ShardJob] = {}
    queue = list(todo)
    samples = ok = 0
    bar = tqdm(total=len(jobs), initial=skipped, desc=f"{stage}", unit=progress_unit, disable=quiet or None)

    def submit(job: ShardJob) -> None:
        ref = task.remote(work_ref, job, dataset.root, dataset.name, folder)
        in_flight[ref] = job

    try:
        while queue or in_flight:
            while queue and len(in_flight) < max_in_flight:
                submit(queue.pop(0))
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            job = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except (ray.exceptions.RayError, Exception) as err:  # task raised, or its worker died
                attempts[job.shard] += 1
                reason = _short_error(err)
                if attempts[job.shard] <= retries:
                    log.warning("%s shard %s failed (%s); retry %d/%d", stage, job.shard, reason,
                                attempts[job.shard], retries)
                    queue.append(job)
                else:
                    log.error("%s shard %s failed after %d retries: %s", stage, job.shard, retries, reason)
                    failed[job.shard] = reason
                    bar.update(1)
                continue
            samples += int(record.get("samples", 0))
            ok += int(record.get("ok", 0))
            elapsed = max(time.time() - t0, 1e-6)
            bar.set_postfix_str(f"{samples / elapsed:.0f} samples/s, ok {ok / max(samples, 1):.1%}")
            bar.update(1)
    finally:
        bar.close()
        for ref in in_flight:
            ray.cancel(ref, force=True)

    records = dataset.done_shards(folder)
    records = {k: v for k, v in records.items() if k in {j.shard for j in jobs}}
    total_samples, total_ok, reasons = aggregate(records)
    for k, v in (extra_reasons or {}).items():
        reasons[k] = reasons.get(k, 0) + v
    summary = StageSummary(
        stage=stage,
        dataset=dataset.url,
        shards_total=len(jobs),
        shards_done=len(records),
        shards_skipped=skipped,
        shards_failed=sorted(failed),
        retries_used=sum(attempts.values()),
        samples=total_samples,
        ok=total_ok,
        reasons=reasons,
        wall_seconds=time.time() - t0,
    )
    section = {
        **(manifest or {}),
        **summary.as_dict(),
        "run_samples_per_s": round(samples / max(summary.wall_seconds, 1e-6), 2),
        "shard_failures": failed,
        "checksums": {s: {f: v["sha256"] for f, v in r.get("files", {}).items()} for s, r in sorted(records.items())},
    }
    dataset.update_manifest(stage, section)
    if not quiet:
        print_stage_summary(stage, summary, section)
    if failed:
        raise StageIncomplete(
            f"{stage}: {len(failed)} of {len(jobs)} shards failed after {retries} retries "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(failed.items())[:5])}); the {len(records)} done shards "
            "are kept; run the same command again to retry the rest"
        )
    return summary


def _short_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    # RayTaskError's text starts with a traceback header; its last line is the user's exception.
    return (text[-1] if text else type(err).__name__)[:300]
