"""Run a stage shard by shard as Ray tasks: bounded tasks in flight, retries, done markers, progress and a summary.

A stage hands `run_shards` a list of `ShardJob`s and a plain work function `work(job) -> record`. The work function
writes the shard's files under temporary names and renames them into place; it returns a record (counts, reasons,
file checksums) that the task wrapper writes as the shard's `_done` marker, last. A rerun skips shards whose marker
exists and whose files still match the recorded checksums, so a crash at any point is repaired by running the same
command again.

img2dataset's own ray distributor submits every shard at once and never retries; `BoundedTasks` keeps at most
`max_in_flight` tasks submitted (memory and object store stay bounded) and resubmits a failed task, whether it raised
or its worker process died, up to `retries` times. A task still running `deadline_s` after it was submitted is
cancelled (its worker killed) and retried like a failed one, so a shard stuck on something no timeout covers cannot
hold a stage forever; retries are counted by reason (`shard_deadline`, `node_lost`, `task_failed`). `map_bounded` is
the same loop for work that is not a shard of the output (reshard indexing its source shards).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pipeline.core.layout import Dataset
from pipeline.execution.record import (
    StageIncomplete,
    StageRecord,
    StageSummary,
    alive_nodes,
    failures_text,
    short_error,
    write_done,
)

log = logging.getLogger(__name__)


@dataclass
class ShardJob:
    shard: str  # output shard name, e.g. "00003"; one input shard -> one output shard with the same name
    payload: Any = None  # whatever the work function needs: an input file, a row range, ...


# What Ray says of a task whose node died (its raylet and workers gone), in the versions we run
NODE_LOST = ("NodeDiedError", "LocalRayletDiedError", "node it was running on is dead", "raylet died",
             "node died")


def retry_code(reason: str) -> str:
    """Why a task is retried, as a reason code: `shard_deadline`, `node_lost` (its node vanished: its raylet died,
    and with it the worker and any object only that node held; the retry redoes the shard elsewhere) or
    `task_failed`."""
    if reason.startswith("shard_deadline"):
        return "shard_deadline"
    if any(mark.lower() in reason.lower() for mark in NODE_LOST):
        return "node_lost"
    return "task_failed"


def _call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


@dataclass
class BoundedTasks:
    """`fn(*args)` as Ray tasks over named argument tuples: at most `max_in_flight` submitted, `retries` each."""

    fn: Callable
    num_cpus: float = 1.0
    max_in_flight: int = 2
    retries: int = 2
    label: str = "task"  # names a task in log lines: "<label> <name>"
    deadline_s: float | None = None  # a task running longer (since submission) is cancelled and retried
    env: dict[str, str] | None = None  # environment variables of the tasks' worker processes
    retries_used: int = 0
    retry_reasons: Counter = field(default_factory=Counter)  # reason code -> retries

    def run(self, items: dict[str, tuple]) -> Iterator[tuple[str, Any, str | None]]:
        """Yield (name, result, None) as tasks finish, or (name, None, why) for one that failed its last retry."""
        import ray

        # max_retries=0: retries are done here, so that they are counted and reported. The task takes the work's
        # name (`ray::_run_and_mark` in `ps` and the dashboard), not the wrapper's.
        name = getattr(getattr(self.fn, "func", self.fn), "__name__", type(self.fn).__name__)
        options: dict[str, Any] = {"name": name}
        if self.env:  # set before the worker imports anything (e.g. OpenCV reads its pixel cap once, at import)
            options["runtime_env"] = {"env_vars": dict(self.env)}
        task = ray.remote(num_cpus=self.num_cpus, max_retries=0)(_call).options(**options)
        fn_ref = ray.put(self.fn)  # stored once, not pickled into every task
        attempts: Counter[str] = Counter()
        queue = list(items)
        in_flight: dict[Any, tuple[str, float]] = {}  # ref -> (name, submitted at)
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.max_in_flight:
                    name = queue.pop(0)
                    in_flight[task.remote(fn_ref, *items[name])] = (name, time.monotonic())
                for name, result, reason in self._next_done(in_flight):
                    if reason is None:
                        yield name, result, None
                        continue
                    attempts[name] += 1
                    if attempts[name] <= self.retries:
                        code = retry_code(reason)
                        self.retry_reasons[code] += 1
                        log.warning("%s %s failed (%s); retry %d/%d", self.label, name, reason, attempts[name],
                                    self.retries)
                        self.retries_used += 1
                        queue.append(name)
                    else:
                        log.error("%s %s failed after %d retries: %s", self.label, name, self.retries, reason)
                        yield name, None, reason
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)

    def _next_done(self, in_flight: dict) -> list[tuple[str, Any, str | None]]:
        """Wait for the next task to finish or pass its deadline; (name, result, why it failed or None) for
        each such task, removed from `in_flight` (a task past its deadline is cancelled, its worker killed)."""
        import ray

        timeout = None
        if self.deadline_s is not None:
            oldest = min(t for _, t in in_flight.values())
            timeout = max(0.0, oldest + self.deadline_s - time.monotonic())
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
        if ready:
            (ref,) = ready
            name, _ = in_flight.pop(ref)
            try:
                return [(name, ray.get(ref), None)]
            except Exception as err:  # the task raised, or its worker died (both are RayErrors here)
                return [(name, None, short_error(err))]
        now, late = time.monotonic(), []
        for ref in [r for r, (_, t) in in_flight.items() if now - t >= self.deadline_s]:
            name, _ = in_flight.pop(ref)
            ray.cancel(ref, force=True)
            late.append((name, None, f"shard_deadline: still running after {self.deadline_s:.0f} s; cancelled"))
        return late


def map_bounded(fn: Callable, items: dict[str, tuple], *, num_cpus: float = 1.0, max_in_flight: int = 2,
                retries: int = 2, label: str = "task") -> dict[str, Any]:
    """{name: fn(*args)} over `items`, run as bounded, retried Ray tasks; StageIncomplete if any still fails."""
    tasks = BoundedTasks(fn, num_cpus=num_cpus, max_in_flight=max_in_flight, retries=retries, label=label)
    results, failed = {}, {}
    for name, result, error in tasks.run(items):
        if error is None:
            results[name] = result
        else:
            failed[name] = error
    if failed:
        raise StageIncomplete(f"{label}: {len(failed)} of {len(items)} tasks failed after {retries} retries "
                              f"({failures_text(failed)}); run the same command again")
    return results


def _run_and_mark(work: Callable[[ShardJob], dict], job: ShardJob, root: str, name: str, folder: str) -> dict:
    """Task body: do the shard's work, then write its marker (after its files are in place)."""
    t0 = time.time()
    record = work(job)
    return write_done(Dataset(root, name), job.shard, {**record, "seconds": round(time.time() - t0, 3)}, folder)


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
    deadline_s: float | None = None,
    env: dict[str, str] | None = None,
    current: Callable[[str, dict], bool] | None = None,
) -> StageSummary:
    """Run `work` over `jobs` on Ray, skipping complete shards; write the manifest section; return the summary.

    `extra_reasons` are samples the stage dropped before any shard work (see `StageRecord.finish`). A shard task
    still running `deadline_s` after submission is cancelled and retried; `env` is its worker's environment. A done
    shard whose marker `current(shard, marker)` rejects (made from another source or settings) is redone.
    Raises StageIncomplete (after writing the manifest) when shards still fail after `retries` retries.
    """
    record = StageRecord(stage, dataset, [j.shard for j in jobs], folder=folder, unit=progress_unit, quiet=quiet,
                         max_retries=retries)
    todo = set(record.pending(current, verify=verify_done))
    if record.nodes_at_start is None:  # the record was made before the stage started Ray
        record.nodes_at_start = alive_nodes()
    tasks = BoundedTasks(partial(_run_and_mark, work), num_cpus=num_cpus, max_in_flight=max_in_flight,
                         retries=retries, label=f"{stage} shard", deadline_s=deadline_s, env=env)
    with record.progress():
        for shard, marker, error in tasks.run({j.shard: (j, dataset.root, dataset.name, folder)
                                               for j in jobs if j.shard in todo}):
            if error is None:
                record.shard_done(marker)
            else:
                record.shard_failed(shard, error)
    record.retries_used = tasks.retries_used
    record.retry_reasons = dict(tasks.retry_reasons)
    return record.finish(manifest, extra_reasons)
