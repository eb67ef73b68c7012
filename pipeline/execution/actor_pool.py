"""Run a model over a dataset's shards with Ray Data, writing one output shard at a time on the driver.

    items (one per shard) -> read tasks: each shard's rows in chunks, then one end-of-shard row (CPU tasks)
                          -> the model class as an actor pool (map_batches(Cls, compute=ActorPoolStrategy(...)))
                          -> the driver: rows collected per shard, deduplicated by key; a complete shard goes to the
                             stage's writer, then gets its done marker

A stage supplies three plain pieces and no Ray code:
- `read(item, **kwargs)`: yields column chunks (dicts of equal-length numpy arrays) of the shard `item["shard"]`,
  then one `ShardEnd` (what the read saw, and one blank row in the chunks' layout);
- a model class: `__init__(**kwargs)` loads the model once per actor, `__call__(batch) -> batch` adds columns (the
  blank row goes through it too: mark it so the model skips it, as `decodable=False` does for the scorer);
- `write(shard, cols, info) -> record`: writes the shard's files (temporary names, renamed) and returns its record
  (samples, ok, reasons, files with checksums, anything else for the marker).

Where the time goes (`pipeline.core.timing`): a read function may put its own split in its `ShardEnd.info`
(`time_split`: reading tar members, decoding); the runner times the model's calls in the actors (a per-row column
that the driver sums per shard), the writer, and the driver's waits for rows.

The end-of-shard row carries the shard's row count, so the driver writes a shard as soon as all of its rows are in,
whatever order Ray Data delivers them; rows are deduplicated by key, so a retried task cannot write a sample twice.
When the pipeline fails (an actor raised, say), the shards already written are kept and the pipeline is rebuilt
over the rest, up to `retries` times. A killed run leaves only complete shards; a rerun redoes the unmarked ones.
A lost node is Ray Data's to repair (it re-runs the node's tasks, restarts its actors elsewhere, rebuilds lost
blocks from their lineage; the collector drops the rows that arrive twice). When nothing comes back for
`stall_timeout` seconds (an actor no node left can host, say), the stage stops there rather than wait forever: its
written shards are kept and it fails with the command that continues it.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.core.config import ConfigError, StrictModel
from pipeline.execution.record import StageRecord, alive_nodes, short_error, write_done

log = logging.getLogger(__name__)

END, ROWS, INFO = "end_of_shard", "shard_rows", "shard_info"  # the end-of-shard protocol's columns
MODEL_S = "model_seconds"  # per row: its batch's model time over the batch's rows (summed per shard by the driver)
PROTOCOL = (END, ROWS, INFO, MODEL_S)


class ActorPoolConfig(StrictModel):
    """The settings of a stage that runs a model over shards (mixed into its config: `stages.<name>.actors`)."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs (auto: GPU if any)")
    actors: int = Field(1, ge=1, description="model actors (each loads the model once)")
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs per model actor (its torch threads)")
    actor_num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; default 1 on a GPU cluster")
    batch_size: int = Field(64, ge=1, description="rows per model call")
    read_num_cpus: float = Field(1.0, gt=0, description="CPUs per read/decode task")
    read_memory_mb: int = Field(512, ge=1, description="memory reserved per read task (one chunk of a shard)")
    chunk_rows: int = Field(256, ge=1, description="rows per block from a read task")
    retries: int = Field(2, ge=0, description="rebuilds of a failed pipeline over the shards it left unwritten")
    stall_timeout: float = Field(900.0, gt=0, description="seconds without any row back (model loading included) "
                                                          "after which the stage fails instead of waiting: e.g. "
                                                          "its actors no longer fit the nodes left")


def plan_resources(cfg: ActorPoolConfig, cluster: dict, with_model: bool = True, stage: str = "") -> dict:
    """Actors, CPUs and GPUs that leave room for read tasks (actors on every CPU starve reads: ray#44687)."""
    cpus = float(cluster.get("cpus") or 1)
    gpus = float(cluster.get("gpus") or 0)
    if not with_model:  # read tasks are the whole stage
        return {"actors": 0, "actor_cpus": 0.0, "actor_gpus": 0.0, "device": "cpu", "threads": 1,
                "read_cpus": min(cfg.read_num_cpus, cpus)}
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
    device = "cuda" if use_gpu else "cpu"
    actor_gpus = cfg.actor_num_gpus if cfg.actor_num_gpus is not None else (1.0 if use_gpu else 0.0)
    if actor_gpus > 0 and gpus == 0:
        raise ConfigError(f"{stage}: device {cfg.device!r} / actor_num_gpus {actor_gpus} asks for a GPU, but the Ray "
                          "cluster has none (set device: cpu, or run on a cluster with GPUs)")
    actors = cfg.actors
    if actor_gpus > 0 and gpus > 0:
        actors = min(actors, max(1, int(gpus // actor_gpus)))
    read_cpus = cfg.read_num_cpus
    if cpus < read_cpus + min(cfg.actor_num_cpus, 1.0):
        # a tiny cluster: reads and the actor share it, or one of them could never be scheduled
        return {"actors": 1, "actor_cpus": cpus / 2, "actor_gpus": actor_gpus, "device": device, "threads": 1,
                "read_cpus": cpus / 2}
    room = cpus - read_cpus
    fit = max(1, int(room // cfg.actor_num_cpus)) if room >= cfg.actor_num_cpus else 1
    if fit < actors:
        log.warning("%s: %d actors x %.2g CPUs leave no CPU for reads on %.0f CPUs; using %d",
                    stage, actors, cfg.actor_num_cpus, cpus, fit)
        actors = fit
    actor_cpus = min(cfg.actor_num_cpus, room / actors)
    return {"actors": actors, "actor_cpus": actor_cpus, "actor_gpus": actor_gpus, "device": device,
            "threads": max(1, int(round(actor_cpus))), "read_cpus": read_cpus}


@dataclass
class ShardEnd:
    """The last thing a read function yields for a shard."""

    info: dict  # what the read saw (skipped members, a tar error): handed to the writer
    row: dict[str, np.ndarray]  # one row in the layout of the shard's chunks: it travels through the model with them


@dataclass
class ReadStep:
    fn: Callable[..., Iterator[dict | ShardEnd]]  # fn(item, **kwargs)
    kwargs: dict = field(default_factory=dict)
    num_cpus: float = 1.0
    # `memory` is a real reservation, and it also keeps Ray Data from fusing reads into the model actors (it fuses
    # ops whose remote args match), which would run decode and inference one after the other in one process.
    memory_mb: int = 512


@dataclass
class ModelStep:
    cls: type  # __init__(**kwargs), __call__(batch: dict[str, np.ndarray]) -> batch
    kwargs: dict = field(default_factory=dict)
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 64


class TimedModel:
    """The stage's model class as the actor: the same calls, each one's seconds spread over its rows (`MODEL_S`).
    Built through `timed(cls)`, which names it after the model, so process titles and Ray's dashboard still say
    `MapBatches(DFNScorer)`, not the wrapper's name."""

    def __init__(self, cls: type, kwargs: dict):
        self.model = cls(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.model(batch)
        n = len(next(iter(out.values())))
        out[MODEL_S] = np.full(n, (time.perf_counter() - t0) / max(n, 1), dtype=np.float64)
        return out


@functools.cache
def timed(cls: type) -> type:
    """A TimedModel subclass carrying `cls`'s name (Ray Data names the actors' operator and processes by it)."""
    return type(cls.__name__, (TimedModel,), {"__qualname__": cls.__name__, "__module__": __name__,
                                              "__doc__": f"{cls.__name__}, timed (see TimedModel)."})


def _tagged(cols: dict, shard: str, end: bool, rows: int, info: str) -> dict:
    n = len(next(iter(cols.values())))
    return {**cols, "shard": np.full(n, shard, dtype=object), END: np.full(n, end, dtype=bool),
            ROWS: np.full(n, rows, dtype=np.int64), INFO: np.array([info] * n, dtype=object)}


def read_shards(batch: dict[str, np.ndarray], read: Callable, kwargs: dict) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF over items: the stage's chunks of each shard, then its end-of-shard row with the row count."""
    for i in range(len(batch["shard"])):
        item = {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in batch.items()}
        shard, rows = str(item["shard"]), 0
        for out in read(item, **kwargs):
            if isinstance(out, ShardEnd):
                yield _tagged(out.row, shard, end=True, rows=rows, info=json.dumps(out.info))
                break
            rows += len(next(iter(out.values())))
            yield _tagged(out, shard, end=False, rows=-1, info="")
        else:
            raise RuntimeError(f"the read function of shard {shard} ended without a ShardEnd")


class ShardCollector:
    """Rows arrive in any order, possibly twice (task retries); a shard is complete when all its keys are in."""

    def __init__(self, key: str = "key"):
        self.key = key
        self.parts: dict[str, list[dict]] = defaultdict(list)
        self.keys: dict[str, set[str]] = defaultdict(set)
        self.expected: dict[str, int] = {}
        self.info: dict[str, dict] = {}
        self.empty: dict[str, dict] = {}  # zero rows in the shard's layout, for a shard without rows
        self.finished: set[str] = set()  # popped: late copies of their rows are ignored
        self.model_s: dict[str, float] = defaultdict(float)  # model seconds per shard (copies of rows included)

    def add(self, batch: dict[str, np.ndarray]) -> list[str]:
        """Take a batch; return the shards it completed."""
        shards = np.asarray(batch["shard"]).astype(str)
        end = np.asarray(batch[END], dtype=bool)
        if MODEL_S in batch:
            for s, secs in zip(shards, np.asarray(batch[MODEL_S], dtype=np.float64), strict=True):
                self.model_s[s] += secs
        data = {name: np.asarray(col) for name, col in batch.items() if name not in PROTOCOL}
        touched = set()
        for i in np.flatnonzero(end):
            s = shards[i]
            if s not in self.finished:
                self.expected[s] = int(batch[ROWS][i])
                self.info[s] = json.loads(batch[INFO][i])
                self.empty[s] = {name: col[i:i] for name, col in data.items()}
                touched.add(s)
        rows = np.flatnonzero(~end)
        for s in np.unique(shards[rows]):
            if s in self.finished:
                continue
            seen = self.keys[s]
            keep = []
            for i in rows[shards[rows] == s]:
                k = str(data[self.key][i])
                if k not in seen:
                    seen.add(k)
                    keep.append(i)
            if keep:
                self.parts[s].append({name: col[keep] for name, col in data.items()})
            touched.add(s)
        return [s for s in sorted(touched) if s in self.expected and len(self.keys[s]) >= self.expected[s]]

    def pop(self, shard: str) -> tuple[dict[str, np.ndarray], dict]:
        """(the shard's columns, its read info with the model's seconds added to its `time_split`), and forget it."""
        self.finished.add(shard)
        parts = self.parts.pop(shard, [])
        self.keys.pop(shard, None)
        self.expected.pop(shard, None)
        empty = self.empty.pop(shard)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else empty
        info = self.info.pop(shard, {})
        info["time_split"] = {**info.get("time_split", {}), "model": self.model_s.pop(shard, 0.0)}
        return cols, info


def build_dataset(items: list[dict], read: ReadStep, model: ModelStep | None, block_bytes: int | None = None):
    """The Ray Data pipeline: read tasks, then (with a model) the actor pool."""
    import ray

    data = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    data = data.map_batches(read_shards, batch_size=1, num_cpus=read.num_cpus, memory=read.memory_mb * 1024 * 1024,
                            fn_kwargs={"read": read.fn, "kwargs": read.kwargs})
    if model is not None:
        data = data.map_batches(timed(model.cls), fn_constructor_kwargs={"cls": model.cls, "kwargs": model.kwargs},
                                compute=ray.data.ActorPoolStrategy(size=model.actors), num_cpus=model.num_cpus,
                                num_gpus=model.num_gpus or None, batch_size=model.batch_size, batch_format="numpy")
    if block_bytes:
        # Ray Data merges a task's outputs up to `target_max_block_size` (128 MiB) before passing them on, so a
        # shard's rows would reach the model only once the whole shard is read; chunk-sized blocks let the actor
        # start on a shard's first rows while the rest is read. `data.context` is this dataset's own copy.
        data.context.target_max_block_size = block_bytes
    return data


Writer = Callable[[str, dict, dict], dict]  # write(shard, cols, info) -> the shard's record


def run_actor_pool(record: StageRecord, items: list[dict], write: Writer, read: ReadStep,
                   model: ModelStep | None = None, *, key: str = "key", block_bytes: int | None = None,
                   retries: int = 2, stall_s: float | None = None) -> None:
    """Run the pipeline over `items` (dicts with at least "shard": the record's pending shards), writing each shard
    and its marker as it completes; the record counts shards done, failed and retried. Call `record.finish` after."""
    record.max_retries = retries
    if record.nodes_at_start is None:  # the record was made before the stage started Ray
        record.nodes_at_start = alive_nodes()
    record.timings.setdefault("startup_seconds", None)  # workers, actors and the model starting: not per-sample
    left = {str(it["shard"]): it for it in items}
    attempt = 0
    with record.progress():
        while left:
            reason = _stream(record, left, write, read, model, key, block_bytes, stall_s)
            reason = reason or "its rows never all arrived"
            if not left:
                break
            if reason.startswith(STALLED):  # its pipeline still holds the cluster: a rebuild would wait behind it
                for shard in sorted(left):
                    record.shard_failed(shard, reason)
                break
            attempt += 1
            if attempt > retries:
                for shard in sorted(left):
                    record.shard_failed(shard, reason)
                break
            log.warning("%s: %d shards not written (%s); rebuilding the pipeline for them, retry %d/%d",
                        record.stage, len(left), reason, attempt, retries)
            record.retries_used += len(left)


STALLED = "stalled"
_END = object()


def _batches(data, stall_s: float | None) -> Iterator[dict]:
    """`data`'s batches; with `stall_s`, read by a thread, and TimeoutError when none comes for `stall_s` seconds
    (a blocked Ray Data iterator cannot be interrupted: the thread is left behind, a daemon, with the pipeline)."""
    batches = data.iter_batches(batch_size=None, batch_format="numpy")
    if stall_s is None:
        yield from batches
        return
    box: queue.Queue = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for b in batches:
                box.put(b)
            box.put(_END)
        except BaseException as err:  # handed to the reader, which raises it
            box.put(err)

    threading.Thread(target=pump, daemon=True, name="actor-pool-batches").start()
    while True:
        try:
            item = box.get(timeout=stall_s)
        except queue.Empty:
            raise TimeoutError(f"{STALLED}: no rows back for {stall_s:.0f} s (stall_timeout); its actors or read "
                               "tasks may no longer fit the nodes left") from None
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _stream(record: StageRecord, left: dict[str, dict], write: Writer, read: ReadStep, model: ModelStep | None,
            key: str, block_bytes: int | None, stall_s: float | None = None) -> str | None:
    """One pass of the pipeline over the shards `left`, removing each from it once written; why it stopped early."""
    collector = ShardCollector(key)
    try:
        data = build_dataset(list(left.values()), read, model, block_bytes)
        waited = time.perf_counter()
        for batch in _batches(data, stall_s):
            record.add_time({"waiting": time.perf_counter() - waited})
            record.started()
            for shard in collector.add(batch):
                cols, info = collector.pop(shard)
                record.add_time(info.pop("time_split"))
                t0 = time.perf_counter()
                done = write(shard, cols, info)
                record.add_time({"writing": time.perf_counter() - t0})
                record.shard_done(write_done(record.dataset, shard, done, record.folder))
                del left[shard]
            waited = time.perf_counter()
    except TimeoutError as err:
        if str(err).startswith(STALLED):
            return str(err)
        return short_error(err)
    except Exception as err:  # an actor or read task failed for good, or a write did: the rest is retried
        return short_error(err)
    return None

