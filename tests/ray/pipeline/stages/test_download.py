"""The download stage end to end: real img2dataset, real Ray, the synthetic web on loopback with its faults."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image

from pipeline.cli.run import run_pipeline
from pipeline.core.config import ConfigError
from pipeline.core.ids import uid_of
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

REPO = Path(__file__).resolve().parents[4]
# What each server fault must be counted as.
FAULT_REASON = {"http_404": "http_404", "http_500": "http_500", "slow": "timeout", "truncated": "truncated",
                "not_image": "not_an_image", "oversized": "too_many_pixels", "opt_out": "opted_out"}
WEB = {"pool_size": 600, "hq_size": 10, "test_size": 20, "slow_seconds": 2.0,
       "faults": {"http_404": 0.03, "http_500": 0.03, "slow": 0.01, "truncated": 0.02, "not_image": 0.02,
                  "oversized": 0.01, "opt_out": 0.02}}


def write_config(tmp: Path, web_dir: Path, root: Path, **download) -> Path:
    cfg = {"name": "t", "root": str(root), "synthetic": {**WEB, "dir": str(web_dir)},
           "stages": {"download": {"source": "synthetic", "output": "pool", "image_size": 32,
                                   "resize_mode": "center_crop", "number_sample_per_shard": 150, "thread_count": 16,
                                   "timeout": 1, **download}}}
    path = tmp / f"cfg-{root.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Path:
    from pipeline.synthetic.config import SyntheticWebConfig
    from pipeline.synthetic.web import build_web

    d = tmp_path_factory.mktemp("web")
    build_web(SyntheticWebConfig(**WEB, dir=str(d)), str(d))
    return d


@pytest.fixture(scope="module")
def downloaded(ray_local, web: Path, tmp_path_factory) -> Dataset:
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_pipeline_config(write_config(tmp, web, tmp / "a"))
    run_pipeline(cfg, "download")
    return Dataset(str(tmp / "a"), "pool")


def rows_of(ds: Dataset) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in ds.shard_files(ext="parquet")])


def test_counts_add_up_and_match_the_faults(downloaded: Dataset, web: Path) -> None:
    truth = pq.read_table(web / "truth.parquet").to_pandas()
    pool = truth[truth.split == "pool"]
    rows = rows_of(downloaded).to_pandas()
    section = downloaded.manifest()["stages"]["download"]
    # every input URL is one row, exactly once
    assert len(rows) == len(pool) == section["input"]["rows"]
    assert sorted(rows.uid) == sorted(pool.uid)
    assert section["ok"] + sum(section["reasons"].values()) == len(pool)
    # each server fault is counted under its reason, one for one
    merged = rows.merge(pool[["uid", "fault"]], on="uid")
    for fault, reason in FAULT_REASON.items():
        got = merged[merged.fault == fault].reason
        assert len(got) == (pool.fault == fault).sum()
        assert (got == reason).all(), (fault, got.value_counts().to_dict())
    assert (merged[merged.fault == "none"].reason == "success").all()
    assert section["ok"] == (pool.fault == "none").sum()
    # where the time went: the network wait, the resizer and the writer, summed over shard tasks
    split = section["time_split"]
    assert split["reading"] > 0 and split["decoding"] > 0 and split["writing"] > 0 and split["model"] == 0
    assert 0 < section["startup_seconds"] < section["wall_seconds"]


def test_shards_decode_and_carry_uids(downloaded: Dataset) -> None:
    rows = rows_of(downloaded).to_pandas().set_index("key")
    seen = 0
    for sample in wds.WebDataset(downloaded.shard_files(), shardshuffle=False):
        meta = json.loads(sample["json"])
        img = Image.open(io.BytesIO(sample["jpg"]))
        img.load()
        assert img.size == (32, 32)
        assert meta["uid"] == uid_of(meta["url"]) == rows.loc[sample["__key__"], "uid"]
        assert sample["txt"].decode() == meta["caption"]
        assert rows.loc[sample["__key__"], "status"] == "success"
        seen += 1
    assert seen == (rows.status == "success").sum()


def test_uids_and_outcomes_are_stable_across_runs(downloaded: Dataset, web: Path, tmp_path: Path) -> None:
    run_pipeline(load_pipeline_config(write_config(tmp_path, web, tmp_path / "b")), "download")
    a = rows_of(downloaded).to_pandas().set_index("uid").sort_index()
    b = rows_of(Dataset(str(tmp_path / "b"), "pool")).to_pandas().set_index("uid").sort_index()
    assert list(a.index) == list(b.index)
    assert (a.reason == b.reason).all() and (a.key == b.key).all()


def test_missing_column_fails_before_any_work(tmp_path: Path) -> None:
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"link": ["http://x.invalid/1.jpg"], "caption": ["c"]}), urls)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"root": str(tmp_path / "r"), "stages": {"download": {"url_list": str(urls)}}}))
    with pytest.raises(ConfigError, match=r"urls\.parquet: the URL list has no column 'url' \(named by url_col\)"):
        run_pipeline(load_pipeline_config(cfg), "download")
    assert not (tmp_path / "r").exists()


def test_driver_killed_mid_stage_then_rerun_gives_every_sample_once(downloaded: Dataset, web: Path,
                                                                      tmp_path: Path, ray_local) -> None:
    """SIGKILL the driver (a `winnow run` attached to the session's Ray) after its first shard, then rerun."""
    cfg_path = write_config(tmp_path, web, tmp_path / "c", number_sample_per_shard=60, processes=1)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "pipeline", "run", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ds = Dataset(str(tmp_path / "c"), "pool")
    deadline = time.time() + 300  # a loaded machine starts the driver slowly: wait for two done shards, not a time
    while time.time() < deadline and len(ds.done_shards()) < 2:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(ds.done_shards())
    assert 2 <= n_done < 10, n_done  # interrupted part way

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({n_done} already done" in rerun.stdout
    resumed = rows_of(ds).to_pandas()
    full = rows_of(downloaded).to_pandas()
    assert len(resumed) == len(full) and resumed.uid.is_unique
    assert sorted(resumed.uid) == sorted(full.uid)
    r = resumed.set_index("uid").sort_index()
    f = full.set_index("uid").sort_index()
    assert (r.reason == f.reason).all()
    tar_keys = [s["__key__"] for s in wds.WebDataset(ds.shard_files(), shardshuffle=False)]
    assert len(tar_keys) == len(set(tar_keys)) == (r.status == "success").sum()
    assert not (tmp_path / "c" / "pool" / "_tmp").exists()
