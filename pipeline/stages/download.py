"""The download stage: a URL list in, webdataset shards + parquet + stats out, img2dataset doing each shard.

    winnow run configs/demo.yaml --stage download

The URL list is split into input shards once (`_inputs/`, reused by reruns); each shard is one Ray task that runs
img2dataset's per-shard `Downloader` into a temporary folder behind the address guard, labels every sample with
a reason code, and moves the finished files into `shards/`. The runner writes the `_done` marker last, retries a
failed shard, and skips done ones, so the output matches img2dataset's layout and a rerun completes a crashed run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from pipeline.core.config import ConfigError, config_hash
from pipeline.core.layout import (
    Dataset,
    file_record,
    fs_and_path,
    fsync_dir,
    fsync_file,
    is_local,
    join,
    sha256_file,
    write_json_atomic,
)
from pipeline.core.timing import TimeSplit
from pipeline.execution.shard_tasks import ShardJob
from pipeline.fetch.net_guard import ByteBudget, GuardConfig, GuardPolicy
from pipeline.fetch.resize import GuardedResizerMixin, ReducedDecodeMixin
from pipeline.stages.base import StageConfig
from pipeline.stages.context import StageContext

log = logging.getLogger(__name__)

OOM_SHARD_COUNT = 5  # shard names are 5 digits, as in img2dataset's default
URL_DEADLINE_TIMEOUTS = 6  # a URL's default wall-clock budget, in socket timeouts (`timeout`)


class DownloadConfig(StageConfig):
    source: Literal["urls", "synthetic"] = Field("urls", description="a URL list, or the synthetic web")
    url_list: str | None = Field(None, description="path of the URL list; with source synthetic: 'pool' or 'hq'")
    input_format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    url_col: str = "url"
    caption_col: str | None = "caption"
    save_additional_columns: list[str] = Field(default_factory=list)
    # img2dataset's settings, same names and defaults where it has them
    image_size: int = Field(256, ge=8)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"] = "border"
    resize_only_if_bigger: bool = False
    upscale_interpolation: str = "lanczos"
    downscale_interpolation: str = "area"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    skip_reencode: bool = False
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float | None = Field(None, gt=0)
    number_sample_per_shard: int = Field(10000, ge=1)
    thread_count: int = Field(64, ge=1)
    timeout: float = Field(10, gt=0, description="seconds per socket operation (connect, one read)")
    url_deadline: float | None = Field(
        None, gt=0, description="wall-clock seconds per URL: connect, redirects, headers and body (a server sending a "
                                f"byte a second is cut here); default: {URL_DEADLINE_TIMEOUTS} x timeout (60 s at "
                                "the default timeout of 10 s)")
    retries: int = Field(0, ge=0, description="retries per URL")
    max_url_chars: int = Field(4096, ge=16, description="longer URLs are dropped before download (url_too_long)")
    max_caption_chars: int = Field(4096, ge=1, description="rows with longer captions are dropped before download "
                                                          "(caption_too_long)")
    extract_exif: bool = True
    compute_hash: Literal["md5", "sha256", "sha512"] | None = "sha256"
    # img2dataset's default identity, so opt-outs addressed to img2dataset (X-Robots-Tag: img2dataset: noai) apply
    user_agent_token: str | None = "img2dataset"
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    # orchestration
    processes: int | None = Field(None, ge=1, description="shards in flight at once (default: cluster CPUs)")
    task_cpus: float = Field(1.0, gt=0, description="CPUs reserved per shard task")
    shard_retries: int = Field(2, ge=0, description="retries of a failed shard task")
    shard_deadline: float | None = Field(
        None, gt=0, description="wall-clock seconds per shard task, from its submission, before it is cancelled and "
                                "retried (default: what a shard takes if every URL runs to its deadline, plus 10 "
                                "minutes)")

    def url_deadline_s(self) -> float:
        """`url_deadline`, else a few socket timeouts: a user who sets `timeout: 5` expects a URL given up within
        tens of seconds, not a minute."""
        return self.url_deadline if self.url_deadline is not None else URL_DEADLINE_TIMEOUTS * self.timeout

    def shard_deadline_s(self) -> float:
        if self.shard_deadline is not None:
            return self.shard_deadline
        rounds = math.ceil(self.number_sample_per_shard / self.thread_count) * (self.retries + 1)
        return rounds * self.url_deadline_s() + 600.0
    guard: GuardConfig = GuardConfig()


CONFIG = DownloadConfig


OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"  # read once, when cv2 is imported


def worker_env(max_pixels: int) -> dict[str, str]:
    """Environment of a download task's worker process: OpenCV's own pixel cap, set before cv2 is imported."""
    return {OPENCV_PIXELS_ENV: str(max_pixels)}


@dataclass
class DownloadShard:
    """Work for one shard (runs in a Ray task): img2dataset's Downloader into a temp folder, then into place."""

    root: str
    name: str
    settings: dict
    column_list: list[str]
    policy: GuardPolicy
    max_pixels: int

    def __call__(self, job: ShardJob) -> dict:
        from pipeline.core.shards import sort_tar
        from pipeline.fetch.net_guard import guarded

        if "cv2" not in sys.modules:  # in-process use; a Ray task gets it from worker_env
            os.environ.setdefault(OPENCV_PIXELS_ENV, str(self.max_pixels))
        ds = Dataset(self.root, self.name)
        # img2dataset works in a local folder: inside a local dataset (its files are then renamed into place), or
        # a temporary one when the dataset is remote (its files are then uploaded).
        local = is_local(ds.url)
        tmp = ds.sub("_tmp", f"{job.shard}-{uuid.uuid4().hex[:8]}") if local else \
            tempfile.mkdtemp(prefix=f"winnow-download-{job.shard}-")
        fs, tmp_path = fs_and_path(tmp)
        fs.makedirs(tmp_path, exist_ok=True)
        budget = ByteBudget(self.policy.max_bytes_in_flight or self.policy.max_response_bytes)
        timer, first_at, t0 = TimeSplit(), [], time.perf_counter()
        try:
            # img2dataset deletes its input shard file when done: give it a copy.
            src_fs, src = fs_and_path(ds.sub("_inputs", f"{job.shard}.arrow"))
            with src_fs.open(src, "rb") as fi, fs.open(f"{tmp_path}/input.arrow", "wb") as fo:
                fo.write(fi.read())
            with guarded(self.policy, budget):
                self._downloader(tmp, budget, timer, first_at).download_shard((int(job.shard), f"{tmp}/input.arrow"))
            with timer.part("writing"):
                # Its threads write samples in the order their requests finish: key order makes reruns identical.
                sort_tar(f"{tmp_path}/{job.shard}.tar", f"{tmp_path}/{job.shard}.tar")
                reasons = _label_rows(fs, tmp_path, job.shard)
                files = _place_files(ds, fs, tmp_path, job.shard, local)
        finally:
            if fs.exists(tmp_path):
                fs.rm(tmp_path, recursive=True)
        counts = Counter(reasons)
        # the rest of the shard's time is its wait for the network (the downloader's threads fetch meanwhile)
        timer.add({"reading": max(0.0, time.perf_counter() - t0 - sum(timer.seconds.values()))})
        return {"samples": len(reasons), "ok": counts.get("success", 0),
                "reasons": {k: v for k, v in counts.items() if k != "success"}, "files": files,
                "peak_bytes_in_flight": budget.peak, "time_split": timer.as_dict(),
                "first_sample_at": first_at[0] if first_at else None}

    def _downloader(self, tmp: str, budget: ByteBudget, timer: TimeSplit, first_at: list):  # noqa: ANN202
        from img2dataset.downloader import Downloader
        from img2dataset.resizer import Resizer
        from img2dataset.writer import WebDatasetSampleWriter

        s = self.settings
        resizer_cls = type("GuardedResizer", (GuardedResizerMixin, ReducedDecodeMixin, Resizer),
                           {"max_pixels": self.max_pixels, "budget": budget, "timer": timer, "first_at": first_at})

        def write(writer, *args, **kwargs):  # noqa: ANN001, ANN202
            with timer.part("writing"):
                return WebDatasetSampleWriter.write(writer, *args, **kwargs)
        resizer = resizer_cls(
            image_size=s["image_size"], resize_mode=s["resize_mode"], resize_only_if_bigger=s["resize_only_if_bigger"],
            upscale_interpolation=s["upscale_interpolation"], downscale_interpolation=s["downscale_interpolation"],
            encode_quality=s["encode_quality"], encode_format=s["encode_format"], skip_reencode=s["skip_reencode"],
            min_image_size=s["min_image_size"], max_aspect_ratio=s["max_aspect_ratio"] or float("inf"),
        )
        return Downloader(
            sample_writer_class=type("TimedWriter", (WebDatasetSampleWriter,), {"write": write}), resizer=resizer,
            thread_count=s["thread_count"],
            save_caption="caption" in self.column_list, extract_exif=s["extract_exif"], output_folder=tmp,
            column_list=self.column_list, timeout=s["timeout"],
            number_sample_per_shard=s["number_sample_per_shard"], oom_shard_count=OOM_SHARD_COUNT,
            compute_hash=s["compute_hash"], verify_hash_type=None, encode_format=s["encode_format"],
            retries=s["retries"], user_agent_token=s["user_agent_token"],
            disallowed_header_directives=s["disallowed_header_directives"] or None,
        )


def _label_rows(fs, tmp_path: str, shard: str) -> list[str]:  # noqa: ANN001
    """Label each row with a reason code, in the parquet the rest of the pipeline reads; return the reasons."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.fetch.download_reasons import classify

    with fs.open(f"{tmp_path}/{shard}.parquet", "rb") as f:
        table = pq.read_table(f).sort_by("key")
    reasons = [classify(st, err) for st, err in zip(table["status"].to_pylist(),
                                                     table["error_message"].to_pylist(), strict=True)]
    table = table.append_column("reason", pa.array(reasons, pa.string()))
    with fs.open(f"{tmp_path}/{shard}.meta.parquet", "wb") as f:
        pq.write_table(table, f)
    return reasons


def _place_files(ds: Dataset, fs, tmp_path: str, shard: str, local: bool) -> dict:  # noqa: ANN001
    """Move (local) or upload (remote) the shard's files into `shards/`, each on disk before the marker that follows
    says the shard is complete; return their records (size, sha256)."""
    from pipeline.core.storage import upload

    files = {}
    shards_dir = fs_and_path(ds.sub("shards"))[1]
    if local:
        fs.makedirs(shards_dir, exist_ok=True)
    for src_name, dst_name in ((f"{shard}.tar", f"{shard}.tar"), (f"{shard}.meta.parquet", f"{shard}.parquet"),
                               (f"{shard}_stats.json", f"{shard}_stats.json")):
        src, dst = f"{tmp_path}/{src_name}", ds.sub("shards", dst_name)
        files[f"shards/{dst_name}"] = file_record(fs, src)
        if local:
            fsync_file(src)
            fs.mv(src, fs_and_path(dst)[1])
        else:
            upload(src, dst)
    if local:
        fsync_dir(shards_dir)
    return files


def plan_input_shards(ds: Dataset, cfg: DownloadConfig, url_list: str) -> dict:
    """Split the URL list into `_inputs/<shard>.arrow` once; a rerun with the same list and shard size reuses it."""
    import pyarrow as pa

    from pipeline.fetch.url_list import detect_format, load_url_list

    fmt = detect_format(url_list, cfg.input_format)
    plan_key = {
        "url_list_sha256": sha256_file(*fs_and_path(url_list)),
        "number_sample_per_shard": cfg.number_sample_per_shard,
        "url_col": cfg.url_col, "caption_col": cfg.caption_col, "extra": cfg.save_additional_columns,
        "max_url_chars": cfg.max_url_chars, "max_caption_chars": cfg.max_caption_chars,
    }
    plan_url = ds.sub("_inputs", "plan.json")
    fs, plan_path = fs_and_path(plan_url)
    if fs.exists(plan_path):
        with fs.open(plan_path, "r") as f:
            plan = json.load(f)
        if plan["key"] == plan_key:
            return plan
        if ds.done_shards():
            raise ConfigError(
                f"{ds.url} was downloaded from a different URL list or shard size "
                f"({plan['url_list']}); choose another output or delete the dataset to start over")
        fs.rm(ds.sub("_inputs"), recursive=True)

    table, dropped = load_url_list(url_list, fmt, cfg.url_col, cfg.caption_col, cfg.save_additional_columns,
                                   max_url_chars=cfg.max_url_chars, max_caption_chars=cfg.max_caption_chars)
    n = table.num_rows
    shards = max(1, math.ceil(n / cfg.number_sample_per_shard))
    fs.makedirs(fs_and_path(ds.sub("_inputs"))[1], exist_ok=True)
    for i in range(shards):
        part = table.slice(i * cfg.number_sample_per_shard, cfg.number_sample_per_shard)
        with fs.open(fs_and_path(ds.sub("_inputs", f"{i:05d}.arrow"))[1], "wb") as f:
            with pa.ipc.new_file(f, part.schema) as writer:
                writer.write_table(part)
    plan = {"key": plan_key, "url_list": url_list, "format": fmt, "rows": n + sum(dropped.values()),
            "accepted": n, "dropped_before_download": dropped, "shards": shards, "columns": table.column_names}
    write_json_atomic(plan_url, plan)
    return plan


def resolve_url_list(ctx: StageContext, cfg: DownloadConfig) -> str:
    if cfg.source == "synthetic":
        which = cfg.url_list or "pool"
        if which not in ("pool", "hq"):
            raise ConfigError(f"stages.{ctx.stage}.url_list: with source synthetic, expected 'pool' or 'hq', "
                              f"got {which!r}")
        return join(ctx.pipeline.synthetic_dir(), f"{which}.parquet")
    if not cfg.url_list:
        raise ConfigError(f"stages.{ctx.stage}.url_list: required when source is 'urls'")
    return cfg.url_list


def run(ctx: StageContext, cfg: DownloadConfig) -> dict[str, Any]:
    from pipeline.core.version import code_version
    from pipeline.execution.shard_tasks import run_shards

    output = ctx.output
    ds = Dataset(ctx.root, output)
    url_list = resolve_url_list(ctx, cfg)
    if cfg.source == "urls":
        # Column problems surface here, before Ray starts.
        from pipeline.fetch.url_list import check_columns, detect_format

        check_columns(url_list, detect_format(url_list, cfg.input_format),
                      {"url_col": cfg.url_col, "caption_col": cfg.caption_col,
                       **{f"save_additional_columns[{i}]": c for i, c in enumerate(cfg.save_additional_columns)}})

    with ExitStack() as stack:
        host_map: dict[str, str] = {}
        allow: list[str] = []
        if cfg.source == "synthetic":
            from pipeline.synthetic.config import SyntheticWebConfig
            from pipeline.synthetic.server import serve_web
            from pipeline.synthetic.web import build_web

            web_dir = ctx.pipeline.synthetic_dir()
            build_web(ctx.pipeline.synthetic or SyntheticWebConfig(), web_dir)
            server = stack.enter_context(serve_web(web_dir))
            host_map = dict(server.host_map)
            allow = [f"127.0.0.1:{server.port}"]  # the synthetic web's port, and nothing else on loopback

        plan = plan_input_shards(ds, cfg, url_list)
        _remove_stale_temp(ds)  # temp folders of a killed run: their shards have no marker and are redone
        cluster = ctx.init_ray()
        settings = cfg.model_dump(include={
            "image_size", "resize_mode", "resize_only_if_bigger", "upscale_interpolation",
            "downscale_interpolation", "encode_format", "encode_quality", "skip_reencode", "min_image_size",
            "max_aspect_ratio", "number_sample_per_shard", "thread_count", "timeout", "retries", "extract_exif",
            "compute_hash", "user_agent_token", "disallowed_header_directives"})
        policy = GuardPolicy.from_config(cfg.guard, host_map, allow, url_deadline=cfg.url_deadline_s())
        work = DownloadShard(ctx.root, output, settings, plan["columns"], policy, cfg.guard.max_pixels)
        processes = cfg.processes or max(1, int(cluster["cpus"] // cfg.task_cpus))
        jobs = [ShardJob(f"{i:05d}") for i in range(plan["shards"])]
        summary = run_shards(
            stage=ctx.stage, dataset=ds, jobs=jobs, work=work, num_cpus=cfg.task_cpus,
            max_in_flight=processes, retries=cfg.shard_retries, deadline_s=cfg.shard_deadline_s(),
            env=worker_env(cfg.guard.max_pixels), extra_reasons=plan["dropped_before_download"],
            manifest={"kind": "download", "config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg),
                      "input": {"url_list": url_list, "rows": plan["rows"], "accepted": plan["accepted"],
                                "dropped_before_download": plan["dropped_before_download"]},
                      "code_version": code_version(), "cluster": cluster},
        )
    _remove_stale_temp(ds)
    return {"dataset": ds.url, **summary.as_dict(), "input_rows": plan["rows"]}


def _remove_stale_temp(ds: Dataset) -> None:
    fs, path = fs_and_path(ds.sub("_tmp"))
    if fs.exists(path):
        fs.rm(path, recursive=True)

