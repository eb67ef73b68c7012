"""Training on remote storage (an S3 server on loopback): rank 0's staging folder, step checkpoints found, pruned
and loaded from the bucket, final weights loaded from it, and shards streamed from it."""

from __future__ import annotations

import io
import os
import tarfile

import torch

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import upload
from training import checkpoint as ckpt
from training.data import ErrorCounter, tar_samples
from training.run_dir import RunDir


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


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_shards_stream_from_the_bucket_and_a_missing_one_is_counted(s3_bucket):
    fs, base = fs_and_path(join(s3_bucket, "curated"))
    fs.pipe_file(f"{base}/00000.tar", tar_bytes({"a.txt": b"one", "a.jpg": b"x", "b.txt": b"two"}))
    errors = ErrorCounter()
    urls = [join(s3_bucket, "curated", "00000.tar"), join(s3_bucket, "curated", "00001.tar")]
    samples = list(tar_samples(urls, errors))
    assert [(s["__key__"], s["txt"]) for s in samples] == [("a", b"one"), ("b", b"two")]
    assert errors.count == 1  # 00001.tar does not exist: counted, not raised


def test_a_local_mode_run_on_s3_trains_from_the_bucket_and_a_rerun_resumes_there(shapes, s3_bucket):
    from test_training_objectives import tiny_run

    from training.trainer import fit

    shards = []
    for path in shapes["pool"][:2]:
        shards.append(join(s3_bucket, "curated", os.path.basename(path)))
        upload(path, shards[-1])
    out = join(s3_bucket, "train")
    first = tiny_run("siglip", "tiny-sigmoid-vit", {}, steps=6, checkpoint_every=3)
    result = fit(first, shards, out)
    assert result["step"] == 6 and result["weights"] == join(out, "model.pt")
    assert result["last_checkpoint"] == join(out, "checkpoints", ckpt.step_dir_name(6))
    result = fit(first.model_copy(update={"steps": 9}), shards, out)  # the same command, more steps
    assert result["step"] == 9 and result["resumed_from"] == [6]
    files = keys_under(out)
    assert {"model.pt", "eval.json", "metrics.csv", "resumes.json", "curves.png"} <= set(files)
    assert ckpt.step_dirs(join(out, "checkpoints")) == [ckpt.step_dir_name(6), ckpt.step_dir_name(9)]
    fs, base = fs_and_path(join(out, "metrics.csv"))
    assert [line.split(",")[0] for line in fs.cat_file(base).decode().splitlines()[1:]] == ["5", "6", "9"]


def test_a_run_starts_from_pretrained_weights_in_the_bucket(s3_bucket, tmp_path):
    from training.config import ModelConfig
    from training.models import build_model

    torch.manual_seed(3)
    source = build_model(ModelConfig(name="tiny-clip-vit"), "clip").clip
    ckpt.save_weights(str(tmp_path / "model.pt"), source)
    url = join(s3_bucket, "filter-net", "model.pt")
    upload(str(tmp_path / "model.pt"), url)
    torch.manual_seed(4)  # a different random init: equal weights can only come from the file
    built = build_model(ModelConfig(name="tiny-clip-vit", pretrained=url), "clip").clip
    for name, tensor in source.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor), name
