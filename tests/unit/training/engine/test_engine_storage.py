"""The engine on remote storage (an S3 server on loopback): rank 0's staging folder, step checkpoints found, pruned
and loaded from the bucket, final weights loaded from it."""

from __future__ import annotations

import os

import torch

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import upload
from training.engine import checkpoint as ckpt
from training.engine.run_dir import RunDir


def keys_under(url: str) -> list[str]:
    fs, base = fs_and_path(url)
    return sorted(p[len(base) + 1:] for p in fs.find(base))


def test_a_remote_run_dir_is_staged_locally_pulled_and_pushed_by_change(s3_bucket):
    url = join(s3_bucket, "train")
    fs, base = fs_and_path(url)
    fs.pipe_file(f"{base}/metrics.csv", b"step,loss\n10,1.5\n")
    run = RunDir(url)
    assert run.remote and not run.local.startswith("s3")
    assert run.pull() == ["metrics.csv"]  # resumes.json does not exist yet
    assert open(run.path("metrics.csv")).read() == "step,loss\n10,1.5\n"
    assert run.push() == []  # nothing changed since the pull

    with open(run.path("metrics.csv"), "a") as f:
        f.write("20,1.2\n")
    os.makedirs(run.path("tb"))
    with open(run.path("tb", "events.0"), "wb") as f:
        f.write(b"ev")
    assert sorted(run.push()) == ["metrics.csv", "tb/events.0"]
    assert fs.cat_file(f"{base}/metrics.csv").endswith(b"20,1.2\n")
    assert run.push() == []
    local = run.local
    run.close()
    assert not os.path.exists(local) and keys_under(url) == ["metrics.csv", "tb/events.0"]


def test_a_local_run_dir_is_the_output_directory_itself(tmp_path):
    run = RunDir(str(tmp_path / "out"))
    assert run.local == str(tmp_path / "out") and os.path.isdir(run.local)
    open(run.path("metrics.csv"), "w").close()
    assert run.pull() == [] and run.push() == []
    run.close()
    assert os.path.exists(run.path("metrics.csv"))


def save_step(folder: str, model, opt, step: int) -> None:
    ckpt.save_rank_rng(folder, 0)
    ckpt.save_checkpoint(folder, model=model, optimizer=opt, state={"step": step, "samples_seen": step}, world=1)


def test_remote_checkpoints_are_listed_newest_complete_first_loaded_and_pruned(s3_bucket, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(model.parameters())
    root = join(s3_bucket, "train", "checkpoints")
    for step in (10, 20, 30):
        save_step(str(tmp_path / str(step)), model, opt, step)
        upload(str(tmp_path / str(step)), join(root, ckpt.step_dir_name(step)))
    fs, base = fs_and_path(root)
    fs.rm(f"{base}/{ckpt.step_dir_name(30)}/optimizer.safetensors")  # an upload cut short

    assert ckpt.complete_checkpoints(root) == [join(root, ckpt.step_dir_name(s)) for s in (20, 10)]
    loaded = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    assert loaded["state"]["step"] == 20 and loaded["rng"] is not None
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())

    ckpt.prune_checkpoints(root, keep=1)
    assert ckpt.step_dirs(root) == [ckpt.step_dir_name(30)]


def test_final_weights_load_from_the_bucket(s3_bucket, tmp_path):
    model = torch.nn.Linear(4, 2)
    ckpt.save_weights(str(tmp_path / "model.pt"), model)
    url = join(s3_bucket, "train", "model.pt")
    upload(str(tmp_path / "model.pt"), url)
    assert torch.equal(ckpt.load_weights(url)["weight"], model.weight.detach())
