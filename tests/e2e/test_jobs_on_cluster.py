"""Against a real two-node Ray cluster (`ray start` head + worker on loopback): the demo submitted as a Ray job
(every stage, small), `winnow jobs` and `winnow stop`. A module of its own so that `make test` runs it beside the
cluster's fault tests (test_cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from local_cluster import REPO, wait_for

from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

DEMO_STEPS = 12  # each train-clip stage of the demo submitted as a job


def test_submit_the_demo_as_a_ray_job(cluster, tmp_path: Path) -> None:
    demo = load_pipeline_config(REPO / "configs" / "demo.yaml")
    # the demo's every stage, small: what is asserted is that each ran in the job and its counts add up (training
    # runs in the job's driver here; Ray Train on the cluster is the killed-training-worker test's)
    sets = [f"root={tmp_path / 'run'}", "synthetic.pool_size=160", "synthetic.hq_size=100",
            "synthetic.test_size=30"]
    # 12 steps leave the caption judge near chance, and BLIP's fixed P(match) >= 0.5 may keep no caption at all
    # (reshard then refuses to write an empty dataset); the best half of the captions always keeps some
    recipe = tmp_path / "capfilt_half.yaml"
    recipe.write_text("description: the best half of the captions\nops:\n  - capfilt: {top_fraction: 0.5}\n")
    for name, stage in demo.stages.items():
        if stage.kind in ("filter", "reshard") and stage.recipe == "capfilt":
            sets += [f"{name}.recipe={recipe}"]
        if stage.kind == "download":
            sets += [f"{name}.number_sample_per_shard=80", f"{name}.thread_count=8"]
        if stage.kind == "train-clip":
            sets += [f"{name}.steps={DEMO_STEPS}", f"{name}.checkpoint_every={DEMO_STEPS}",
                     f"{name}.eval.max_samples=30", f"{name}.data.batch_size=16", f"{name}.scaling.num_workers=0"]
        if stage.kind == "train-diffusion":
            sets += [f"{name}.steps=4", f"{name}.sample.grid_every=4", f"{name}.eval.frechet_samples=8",
                     f"{name}.eval.attribute_seeds=1", f"{name}.eval.likelihood.samples=2",
                     f"{name}.data.batch_size=16",
                     f"{name}.scaling.num_workers=0"]
    env = cluster.env
    cmd = [sys.executable, "-m", "pipeline", "submit", "--address", cluster.dashboard_url, "configs/demo.yaml",
           "--follow", *[x for s in sets for x in ("--set", s)]]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    job_id = out.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    assert f"job {job_id}: SUCCEEDED" in out.stdout

    root = tmp_path / "run"
    download = json.loads((root / "pool" / "manifest.json").read_text())["stages"]["download"]
    assert download["input"]["rows"] == 160 == download["ok"] + sum(download["reasons"].values())
    for name, stage in demo.stages.items():
        if stage.kind == "train-clip":
            record = json.loads((root / (stage.output or name) / "train.json").read_text())
            assert record["step"] == DEMO_STEPS
            assert (root / (stage.output or name) / "model.pt").exists()
    kinds = {stage.kind for stage in demo.stages.values()}
    assert {"caption", "train-diffusion"} <= kinds  # the demo shows every capability; each ran in the job:
    captions = list((root / "pool" / "captions").glob("*.parquet"))
    assert captions and sum(pq.read_metadata(f).num_rows for f in captions) == download["ok"]
    assert Dataset(str(root), "capfilt").shard_files()  # the captions CapFilt kept were resharded
    assert json.loads((root / "generator" / "train.json").read_text())["step"] == 4
    listed = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "--address", cluster.dashboard_url],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout


def test_submit_refuses_a_relative_root_before_contacting_the_cluster(cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--address", cluster.dashboard_url,
                          "configs/demo.yaml"], cwd=REPO, env=cluster.env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "relative local path" in out.stderr


def test_stop_a_running_job(cluster, tmp_path: Path) -> None:
    submit = [sys.executable, "-m", "pipeline", "submit", "--address", cluster.dashboard_url, "configs/demo.yaml",
              "--set", f"root={tmp_path / 'run'}", "--set", "synthetic.pool_size=20000"]
    out = subprocess.run(submit, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.split("submitted ", 1)[1].split(":", 1)[0]
    stop = subprocess.run([sys.executable, "-m", "pipeline", "stop", "--address", cluster.dashboard_url, job_id],
                          cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and f"{job_id}: stop requested" in stop.stdout

    def stopped() -> bool:
        listed = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "--address", cluster.dashboard_url],
                                cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=60).stdout
        line = next((li for li in listed.splitlines() if li.startswith(job_id)), "")
        return "STOPPED" in line

    wait_for(stopped, 90, f"job {job_id} to stop")
