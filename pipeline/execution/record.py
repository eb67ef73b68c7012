"""One record of what a shard stage did, kept the same way by both runners (shard tasks and the actor pool).

A `StageRecord` decides which shards still need work (no done marker, damaged files, or a marker made from other
inputs), follows the run (progress bar, samples processed, shards failed, retries), and at the end reads the done
markers back to count samples, ok and reasons, writes the stage's manifest section (counts, timings, failures and
every shard file's checksum) and prints the end-of-stage summary. Counts come from the markers, not from this run,
so a rerun that skips every shard reports the same totals as the run that did the work.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import WinnowError
from pipeline.core.layout import Dataset
from pipeline.core.tables import fmt_seconds, print_summary
from pipeline.core.timing import TimeSplit

log = logging.getLogger(__name__)


class StageIncomplete(WinnowError):
    """Some shards still failed after their retries; the done ones are kept, a rerun retries the rest."""


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
        }


def aggregate(records: dict[str, dict]) -> tuple[int, int, dict[str, int]]:
    """(samples, ok, reasons most common first) over done markers."""
    samples, ok, reasons = 0, 0, Counter()
    for r in records.values():
        samples += int(r.get("samples", 0))
        ok += int(r.get("ok", 0))
        reasons.update(r.get("reasons", {}))
    return samples, ok, dict(reasons.most_common())


def write_done(dataset: Dataset, shard: str, record: dict, folder: str = "shards") -> dict:
    """A shard's done marker, written last: after its files are in place (a crash before it leaves the shard to
    redo)."""
    record = {**record, "shard": shard}
    dataset.write_marker(shard, record, folder)
    return record


def failures_text(failed: dict[str, str], most: int = 5) -> str:
    """`name: why, ...` for an error message: the first `most` failures, in name order."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(failed.items())[:most])


def short_error(err: BaseException) -> str:
    """The line that says what went wrong. A RayTaskError's text is a traceback ending in the user's exception, and
    Ray Data adds its own exception and advice after it: the last `SomeError: ...` line not raised by Ray wins."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]
    users = [line for line in raised if not line.startswith("ray.")]
    return ((users or raised or lines)[-1] if lines else type(err).__name__)[:300]


_RAISED = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


def pending_shards(dataset: Dataset, shards: list[str], folder: str = "shards", stage: str = "",
                   current: Callable[[str, dict], bool] | None = None, verify: bool = True) -> list[str]:
    """Shards that need work, in order: no marker, a marker `current` rejects (made from other inputs or settings),
    or (with `verify`) files that no longer match the marker's checksums. Their markers are removed, so a crash
    before a shard is redone cannot leave a stale marker behind."""
    done = dataset.done_shards(folder)
    todo = []
    for shard in shards:
        record = done.get(shard)
        if record is None:
            todo.append(shard)
            continue
        if current is not None and not current(shard, record):
            log.info("%s: redoing shard %s (made from other inputs or settings)", stage, shard)
        elif problems := (dataset.verify_shard(record) if verify else []):
            log.warning("%s shard %s is done but damaged, rebuilding it: %s", stage, shard, "; ".join(problems))
        else:
            continue
        dataset.remove_marker(shard, folder)
        todo.append(shard)
    return todo


def alive_nodes() -> set[str] | None:
    """The ids of the Ray cluster's live nodes, or None when this process has no Ray (a local stage)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    except Exception:  # the GCS unreachable: say nothing rather than fail the stage's bookkeeping
        return None


@dataclass
class StageRecord:
    """What one stage run did to the shards of one dataset folder (`shards`, `signals`, ...)."""

    stage: str
    dataset: Dataset
    shards: list[str]  # every shard the stage is responsible for: done before, done now, or failed
    folder: str = "shards"
    unit: str = "shard"  # the progress bar's unit
    quiet: bool = False  # no progress bar and no printed summary
    skipped: int = 0
    processed: int = 0  # samples in the shards finished by this run (the throughput line)
    processed_ok: int = 0
    retries_used: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)  # why shard tasks were retried, e.g. shard_deadline
    max_retries: int = 0  # the runner's retry limit, for the message of an incomplete stage
    failed: dict[str, str] = field(default_factory=dict)  # shard -> why, after its retries
    timings: dict[str, float | None] = field(default_factory=dict)  # e.g. startup_seconds, into the manifest
    time_split: TimeSplit = field(default_factory=TimeSplit)  # seconds per part of the work, this run's shards
    t0: float = field(default_factory=time.time)
    # Nodes alive when the stage started: one gone at the end was lost mid-stage (its tasks re-run, its actors
    # restarted, by Ray or by the runner's retries), which the summary says.
    nodes_at_start: set[str] | None = field(default_factory=alive_nodes)
    _bar: Any = field(default=None, init=False, repr=False)

    def pending(self, current: Callable[[str, dict], bool] | None = None, verify: bool = True) -> list[str]:
        """The shards that need work (see `pending_shards`); the others count as skipped."""
        todo = pending_shards(self.dataset, self.shards, self.folder, self.stage, current, verify)
        self.skipped = len(self.shards) - len(todo)
        return todo

    @contextmanager
    def progress(self) -> Iterator[None]:
        """The progress bar over all shards (the skipped ones count as done) while the runner works."""
        from tqdm import tqdm

        self._bar = tqdm(total=len(self.shards), initial=self.skipped, desc=self.stage, unit=self.unit,
                         disable=self.quiet or None)
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None

    def add_time(self, seconds: dict[str, float]) -> None:
        """Seconds spent in parts of the work (`pipeline.core.timing.PARTS`), added to the stage's split."""
        self.time_split.add(seconds)

    def started(self, at: float | None = None) -> None:
        """The first sample was processed (at wall-clock time `at`, default now): the stage's start-up (workers,
        imports, a model's load) ends at the earliest such time."""
        seconds = (at or time.time()) - self.t0
        if self.timings.get("startup_seconds") is None or seconds < self.timings["startup_seconds"]:
            self.timings["startup_seconds"] = seconds

    def _bottleneck(self) -> dict | None:
        neck = self.time_split.bottleneck()
        return {"part": neck[0], "share": round(neck[1], 3)} if neck else None

    def shard_done(self, record: dict) -> None:
        """A shard is finished. What its work measured counts: `time_split` (seconds per part) and
        `first_sample_at` (when its first sample was processed; else the start-up ends now at the latest)."""
        self.started(record.get("first_sample_at"))
        self.add_time(record.get("time_split") or {})
        self.processed += int(record.get("samples", 0))
        self.processed_ok += int(record.get("ok", 0))
        if self._bar is not None:
            rate = self.processed / max(time.time() - self.t0, 1e-6)
            self._bar.set_postfix_str(f"{rate:.0f} samples/s, ok {self.processed_ok / max(self.processed, 1):.1%}")
            self._bar.update(1)

    def shard_failed(self, shard: str, reason: str) -> None:
        self.failed[shard] = reason
        if self._bar is not None:
            self._bar.update(1)

    def nodes_lost(self) -> list[str]:
        """Nodes alive at the start and dead now (ids)."""
        now = alive_nodes()
        if self.nodes_at_start is None or now is None:
            return []
        return sorted(self.nodes_at_start - now)

    def finish(self, manifest: dict | None = None, extra_reasons: dict[str, int] | None = None) -> StageSummary:
        """Count the done shards, write the manifest section (the stage's own keys, `manifest`, first), print the
        summary; raise StageIncomplete, after writing, when shards failed.

        `extra_reasons` are samples the stage dropped before any shard work (e.g. repeated URLs), so that the
        counts add up to the stage's input."""
        wanted = set(self.shards)
        records = {k: v for k, v in self.dataset.done_shards(self.folder).items() if k in wanted}
        samples, ok, reasons = aggregate(records)
        for k, v in (extra_reasons or {}).items():
            reasons[k] = reasons.get(k, 0) + v
        summary = StageSummary(stage=self.stage, dataset=self.dataset.url, shards_total=len(self.shards),
                               shards_done=len(records), shards_skipped=self.skipped,
                               shards_failed=sorted(self.failed), retries_used=self.retries_used, samples=samples,
                               ok=ok, reasons=reasons, wall_seconds=time.time() - self.t0)
        section = {
            **(manifest or {}),
            **summary.as_dict(),
            "run_samples_per_s": round(self.processed / max(summary.wall_seconds, 1e-6), 2),
            **{k: None if v is None else round(v, 2) for k, v in self.timings.items()},
            "time_split": self.time_split.as_dict(),
            "bottleneck": self._bottleneck(),
            "shard_failures": dict(sorted(self.failed.items())),
            "shard_retry_reasons": dict(sorted(self.retry_reasons.items())),
            "nodes_lost": self.nodes_lost(),
            "checksums": {s: {f: v["sha256"] for f, v in r.get("files", {}).items()}
                          for s, r in sorted(records.items())},
        }
        self.dataset.update_manifest(self.stage, section)
        if not self.quiet:
            print_stage_summary(self.stage, summary, section)
        if self.failed:
            raise StageIncomplete(
                f"{self.stage}: {len(self.failed)} of {len(self.shards)} shards failed after {self.max_retries} "
                f"retries ({failures_text(self.failed)}); the "
                f"{len(records)} done shards are kept; run the same command again to retry the rest")
        return summary


def print_stage_summary(stage: str, summary: StageSummary, section: dict) -> None:
    rows: list[tuple[str, object]] = [
        ("dataset", summary.dataset),
        ("shards", f"{summary.shards_done}/{summary.shards_total} done "
                   f"({summary.shards_skipped} already done, {len(summary.shards_failed)} failed, "
                   f"{summary.retries_used} retries)"),
        ("samples", f"{summary.samples} ({summary.ok} ok, success rate {summary.success_rate:.1%})"),
        ("wall time", f"{fmt_seconds(summary.wall_seconds)} ({section.get('run_samples_per_s', 0)} samples/s)"),
    ]
    if section.get("startup_seconds") is not None:
        rows.append(("start-up", f"{section['startup_seconds']:.1f}s (to the first sample back)"))
    if section.get("bottleneck"):
        rows.append(("time split", TimeSplit(section["time_split"]).text()))
    rows += [(label, value) for label, value in section.get("summary_rows") or []]  # a stage's own lines
    for reason, n in list(summary.reasons.items())[:12]:
        rows.append((f"  {reason}", n))
    for reason, n in (section.get("shard_retry_reasons") or {}).items():
        rows.append((f"  shard retries: {reason}", n))
    if section.get("nodes_lost"):
        rows.append(("nodes lost", f"{len(section['nodes_lost'])} mid-stage: their tasks were re-run and their actors "
                                   "restarted on the nodes left; every shard written once, rows deduplicated by key"))
    print_summary(f"stage {stage}", rows)
